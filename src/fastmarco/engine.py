"""The importable query engine: text in, ranked passages out, everything loaded once."""

from __future__ import annotations

import os
from collections.abc import Sequence

from fastmarco.errors import IndexMismatchError, InputError
from fastmarco.model.encoder import Encoder
from fastmarco.model.runtime import Device
from fastmarco.search.backends import SearchIndex, SearchResult
from fastmarco.search.groups import open_search_index


class Engine:
    """Encoder + index + id map. `search` is safe to call from many threads at once: the ONNX
    Runtime session, the faiss index and the native re-scoring are all read-only after `open`.

    `threads` is the budget of one search call: ONNX Runtime's intra-op threads and the native
    search's threads (0: every core). Give concurrent callers a share each so they do not
    oversubscribe the cores. faiss's own candidate search uses its process-wide OpenMP pool.
    The index is one INDEX_DIR or a grouped one (`fastmarco index --groups`), whose groups are
    searched here or, with ray=, by Ray actors (see GroupedIndex.open).
    """

    def __init__(self, encoder: Encoder, index: SearchIndex, threads: int = 0) -> None:
        self.encoder = encoder
        self.index = index
        self.threads = threads

    @classmethod
    def open(
        cls,
        index_dir: str | os.PathLike[str],
        *,
        model: str | os.PathLike[str] | None = None,
        device: Device = "auto",
        nprobe: int | None = None,
        threads: int = 0,
        verify: bool = True,
        ray: bool | str = False,
    ) -> Engine:
        """`model` defaults to the model directory recorded when the shards were encoded; verify=False
        skips hashing the shards (see VectorIndex.open); ray=True or an address searches a grouped
        index's groups on Ray actors (call `close` to release them)."""
        if threads < 0:
            raise InputError(f"threads must be 0 (every core) or positive, got {threads}")
        index = open_search_index(index_dir, nprobe=nprobe, verify=verify, ray=ray)
        try:
            model_dir = model or index.model_directory
            if model_dir is None:
                raise IndexMismatchError(f"{index_dir}: no model directory recorded; pass model=")
            encoder = Encoder.open(model_dir, device=device, busy_wait=False, threads=threads)
            if index.model_fingerprint is not None and encoder.fingerprint != index.model_fingerprint:
                raise IndexMismatchError(
                    f"{index_dir} was built from embeddings of another model, or another export of it, "
                    f"than {model_dir} (fingerprints differ)"
                )
        except BaseException:
            index.close()
            raise
        return cls(encoder, index, threads)

    def search(self, texts: Sequence[str], k: int = 10, *, refine: int | None = None) -> SearchResult:
        """(len(texts), k) exact scores, rows and the corpus's pids, best first (see SearchResult)."""
        vectors = self.encoder.encode(texts)
        return self.index.search(vectors, k, refine=refine, threads=self.threads)

    def close(self) -> None:
        """Release the index's actors, if it has any; the engine cannot search afterwards."""
        self.index.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
