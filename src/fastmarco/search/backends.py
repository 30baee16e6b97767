"""What is searched: `SearchResult`, the `SearchBackend` an index family opens, and `VectorIndex`,
an opened INDEX_DIR whose family (fastmarco.search.kinds) the manifest's factory picks.

Every backend answers a batch of query vectors with a `SearchResult`: exact scores, global row
numbers and the corpus's ids, best first (exact.py re-scores nothing, faiss_kinds.py re-scores its
candidates exactly from the shards), so scores are comparable across kinds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from fastmarco.errors import IndexMismatchError
from fastmarco.progress import Progress
from fastmarco.search.index import GROUPS_MANIFEST, IndexManifest, ShardGroup, check_shards_unchanged
from fastmarco.search.kernels import as_queries, capped_k
from fastmarco.search.kinds import family_for
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
    """What an index family's `open` returns (fastmarco.search.kinds)."""

    shard_set: ShardSet

    def search(
        self, queries: npt.NDArray[np.float32], k: int, *, threads: int = 0, refine: int | None = None
    ) -> SearchResult:
        """Top-k of checked (nq, dim) float32 queries; `refine` overrides the candidates a lossy index
        re-scores (refine x k)."""
        ...


class VectorIndex:
    """An opened INDEX_DIR: its manifest, its shard set and the backend that searches them. Safe to
    share across threads (the id map is loaded at open, not lazily inside concurrent searches)."""

    def __init__(self, directory: Path, manifest: IndexManifest, backend: SearchBackend) -> None:
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
        progress: Progress | None = None,
    ) -> VectorIndex:
        """verify=True hashes every shard and id file (multithreaded; `progress` gets "verify" updates)
        and refuses a corrupt one. verify=False trusts the files (for those who verify elsewhere);
        sizes, headers and the index's record of the shards' checksums are checked either way."""
        root = Path(directory)
        manifest = IndexManifest.load(root)
        path = root / "index.json"
        shard_root = manifest.shard_directory(root)
        check_shards_unchanged(path, shard_root, manifest.shards_manifest)
        shard_set = ShardSet.open(
            shard_root,
            verify="checksum" if verify else "size",
            progress=progress,
            shards=manifest.shard_range,
        )
        recorded = [(e.checksum, e.ids_checksum) for e in shard_set.manifest.shards]
        if manifest.shard_checksums and manifest.shard_checksums != recorded:
            raise IndexMismatchError(
                f"{path}: built from shard files with other checksums; rebuild the index"
            )
        backend = family_for(manifest.factory).open(root, manifest, shard_set, nprobe)
        return cls(root, manifest, backend)

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
        """Top-k of (nq, dim) query vectors: exact scores, global rows and ids, best first; k is capped
        at the index's rows (fewer columns, never padding past them)."""
        q = as_queries(queries, self.shard_set.dim)
        return self.backend.search(q, capped_k(k, self.rows, self.directory), threads=threads, refine=refine)


def open_group(root: Path, group: ShardGroup, *, nprobe: int | None, verify: bool) -> VectorIndex:
    """One group's INDEX_DIR, checked against what groups.json lists for it."""
    index = VectorIndex.open(root / group.directory, nprobe=nprobe, verify=verify)
    covered = index.manifest.shard_range
    if covered != group.shards or index.shard_set.first_row != group.first_row:
        raise IndexMismatchError(
            f"{root / group.directory / 'index.json'}: covers shards {list(covered or ())}, but "
            f"{root / GROUPS_MANIFEST} lists {group.describe()}; rebuild the grouped index"
        )
    return index
