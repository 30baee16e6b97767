"""Search backends over a shard set, and the opened INDEX_DIR that picks one.

Every backend answers a batch of query vectors with a `SearchResult`: exact scores, global row
numbers and the corpus's ids, best first. `ExactBackend` is the native exact search over the shards;
`FaissBackend` asks a faiss index for candidates and re-scores them exactly from the shards, so scores
are comparable across kinds. A GPU exact backend fits the same seam.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from fastmarco import _native
from fastmarco.errors import IndexMismatchError, InputError, ShardFormatError, StoreIOError
from fastmarco.search.index import INDEX_FILE, IndexManifest, check_shards_unchanged
from fastmarco.search.kernels import as_queries, check_k
from fastmarco.store.shards import ShardSet


class SearchResult(NamedTuple):
    """(nq, k) arrays, best first. Missing slots (fewer than k rows): score -inf, row MISSING_ID and
    id -1 (or '' for string ids)."""

    scores: npt.NDArray[np.float32]
    rows: npt.NDArray[np.int64]
    ids: npt.NDArray[Any]


class SearchIndex(Protocol):
    """What `Engine` searches: one INDEX_DIR (`VectorIndex`) or a grouped one (`GroupedIndex`)."""

    @property
    def rows(self) -> int: ...

    @property
    def dim(self) -> int: ...

    @property
    def kind(self) -> str: ...

    @property
    def factory(self) -> str: ...

    @property
    def model_fingerprint(self) -> str | None: ...

    @property
    def model_directory(self) -> str | None:
        """The model directory recorded when the shards were encoded."""
        ...

    def search(
        self, queries: npt.ArrayLike, k: int, *, refine: int | None = None, threads: int = 0
    ) -> SearchResult: ...

    def stored_vectors(self) -> ShardSet:
        """The shard set whose rows `search` returns: pid -> row -> vector lookups (mining)."""
        ...

    def close(self) -> None:
        """Release what the index holds beyond this process's memory (remote actors)."""
        ...


class SearchBackend(Protocol):
    shard_set: ShardSet

    def search(self, queries: npt.NDArray[np.float32], k: int, *, threads: int = 0) -> SearchResult:
        """Top-k of checked (nq, dim) float32 queries."""
        ...


@dataclass
class ExactBackend:
    """Exact inner-product search over every shard by the native core."""

    shard_set: ShardSet

    def search(self, queries: npt.NDArray[np.float32], k: int, *, threads: int = 0) -> SearchResult:
        scores, rows = self.shard_set.search(queries, k, threads=threads)
        return SearchResult(scores, rows, self.shard_set.ids(rows))


@dataclass
class FaissBackend:
    """faiss candidates (refine x k of them for lossy codes), re-scored exactly from the shards."""

    shard_set: ShardSet
    index: Any
    refine: int
    ef_search: int | None = None

    def __post_init__(self) -> None:
        self.shard_views = list(self.shard_set.shard_vectors())

    def search(
        self, queries: npt.NDArray[np.float32], k: int, *, threads: int = 0, refine: int | None = None
    ) -> SearchResult:
        factor = self.refine if refine is None else refine
        depth = min(max(k, k * factor), self.index.ntotal) if factor else min(k, self.index.ntotal)
        params = None
        if self.ef_search:  # HNSW: explore at least 4k candidates whatever k is asked
            import faiss

            params = faiss.SearchParametersHNSW(  # type: ignore[attr-defined]  # missing from faiss's stubs
                efSearch=max(self.ef_search, 4 * depth)
            )
        _, candidates = self.index.search(queries, max(depth, 1), params=params)
        scores = np.empty((queries.shape[0], k), dtype=np.float32)
        rows = np.empty((queries.shape[0], k), dtype=np.int64)
        self.shard_set.check_unchanged()
        # exact scores for every kind, so results and scores are comparable across index kinds
        _native.refine_topk(
            queries, self.shard_views, np.ascontiguousarray(candidates), k, "ip", scores, rows, threads
        )
        return SearchResult(scores, rows, self.shard_set.ids(rows))


class VectorIndex:
    """An opened INDEX_DIR: its manifest, its shard set and the backend that searches them. Safe to
    share across threads (the id map is loaded at open, not lazily inside concurrent searches)."""

    def __init__(
        self, directory: Path, manifest: IndexManifest, backend: ExactBackend | FaissBackend
    ) -> None:
        self.directory = directory
        self.manifest = manifest
        self.backend = backend
        self.shard_set = backend.shard_set
        self.shard_set.ids()

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        nprobe: int | None = None,
        verify: bool = True,
        progress: Callable[[int, int], None] | None = None,
    ) -> VectorIndex:
        """verify=True hashes every shard and id file (multithreaded; progress(bytes_done, bytes_total))
        and refuses a corrupt one. verify=False trusts the files (for those who verify elsewhere);
        sizes, headers and the index's record of the shards' checksums are checked either way."""
        root = Path(directory)
        manifest = IndexManifest.load(root)
        path = root / "index.json"
        shard_root = manifest.shard_directory(root)
        check_shards_unchanged(path, shard_root, manifest.shards_manifest)
        shard_range = None if manifest.shard_range is None else tuple(manifest.shard_range)
        shard_set = ShardSet.open(
            shard_root,
            verify="checksum" if verify else "size",
            progress=progress,
            shards=shard_range,  # type: ignore[arg-type]  # a pair, checked by IndexManifest.load
        )
        recorded = [[e.checksum, e.ids_checksum] for e in shard_set.manifest.shards]
        if manifest.shard_checksums and manifest.shard_checksums != recorded:
            raise IndexMismatchError(
                f"{path}: built from shard files with other checksums; rebuild the index"
            )
        if manifest.factory == "Flat":
            return cls(root, manifest, ExactBackend(shard_set))
        import faiss

        index_path = root / INDEX_FILE
        if not index_path.is_file():
            raise StoreIOError(f"{index_path}: missing from the index directory; rebuild the index")
        try:
            index = faiss.read_index(str(index_path))
        except RuntimeError as exc:
            raise ShardFormatError(
                f"{index_path}: faiss cannot read it (truncated or corrupt); rebuild the index"
            ) from exc
        if index.ntotal != len(shard_set) or index.d != shard_set.dim:
            raise IndexMismatchError(
                f"{path}: index holds {index.ntotal} x {index.d}, shards {len(shard_set)} x {shard_set.dim}"
            )
        if nprobe is not None and nprobe <= 0:
            raise InputError(f"nprobe must be positive, got {nprobe}")
        probes = nprobe or manifest.nprobe
        if probes:
            faiss.ParameterSpace().set_index_parameters(index, f"nprobe={probes}")  # type: ignore[arg-type]
        return cls(root, manifest, FaissBackend(shard_set, index, manifest.refine, manifest.ef_search))

    @property
    def rows(self) -> int:
        return len(self.shard_set)

    @property
    def dim(self) -> int:
        return self.shard_set.dim

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def factory(self) -> str:
        return self.manifest.factory

    @property
    def model_fingerprint(self) -> str | None:
        return self.manifest.model_fingerprint

    @property
    def model_directory(self) -> str | None:
        directory = self.shard_set.metadata.get("model", {}).get("directory")
        return directory if isinstance(directory, str) else None

    def stored_vectors(self) -> ShardSet:
        return self.shard_set

    def close(self) -> None:
        """Nothing to release: the shards' memory maps go with the object."""

    def search(
        self, queries: npt.ArrayLike, k: int, *, refine: int | None = None, threads: int = 0
    ) -> SearchResult:
        """Top-k of (nq, dim) query vectors: exact scores, global rows and ids, best first."""
        q = as_queries(queries, self.shard_set.dim)
        check_k(k)
        if isinstance(self.backend, FaissBackend):
            return self.backend.search(q, k, threads=threads, refine=refine)
        return self.backend.search(q, k, threads=threads)
