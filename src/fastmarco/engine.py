"""The importable query engine: text in, ranked passages out, everything loaded once.

`Engine` is the one seam the front ends use (serve and its batcher, mine, the CLI, the demo): its
verbs tokenize, embed, search by texts or vectors, look up stored vectors by pid and describe what is
loaded; nothing above it reaches into the model or the index. `Tokenized` and `SearchResult` are
re-exported here for them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fastmarco.errors import IndexMismatchError, InputError
from fastmarco.model.encoder import Encoder, Tokenized
from fastmarco.model.runtime import Device
from fastmarco.search.backends import SearchIndex, SearchResult
from fastmarco.search.groups import open_search_index

__all__ = ["Engine", "EngineInfo", "SearchResult", "Tokenized"]


@dataclass(frozen=True)
class EngineInfo:
    """What an engine has loaded, for /info, the serve banner and the model name a server reports."""

    model_directory: Path
    model_source: str | None  # the hub id or folder the model was exported from
    model_fingerprint: str
    dim: int
    similarity: str | None
    max_seq_length: int
    device: str
    index_kind: str
    index_factory: str
    rows: int


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

    def tokenize(self, texts: Sequence[str]) -> Tokenized:
        """The model's tokens of each text, cut to its max_seq_length."""
        return self.encoder.tokenize(texts)

    def embed(self, texts: Sequence[str] | Tokenized) -> npt.NDArray[np.float32]:
        """(len(texts), dim) float32 embeddings of texts, or of texts tokenized by `tokenize`."""
        if isinstance(texts, Tokenized):
            return self.encoder.encode_tokenized(texts).astype(np.float32, copy=False)
        return self.encoder.encode(texts).astype(np.float32, copy=False)

    def search(self, texts: Sequence[str], k: int = 10, *, refine: int | None = None) -> SearchResult:
        """(len(texts), k) exact scores, rows and the corpus's pids, best first (see SearchResult)."""
        return self.search_vectors(self.embed(texts), k, refine=refine)

    def search_vectors(
        self, vectors: npt.ArrayLike, k: int = 10, *, refine: int | None = None
    ) -> SearchResult:
        """The same search for (nq, dim) query vectors already embedded (by `embed`)."""
        return self.index.search(vectors, k, refine=refine, threads=self.threads)

    def vectors_of(self, pids: Sequence[str]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """The stored vectors of `pids` (by the project's id rule) and which of them were found; a
        missing pid's row is zeros."""
        stored = self.index.stored_vectors()
        rows = stored.rows_of(pids)
        found = rows >= 0
        vectors = np.zeros((len(pids), self.index.dim), dtype=np.float32)
        vectors[found] = stored.vectors_of(rows[found])
        return vectors, found

    def describe(self) -> EngineInfo:
        model = self.encoder.model
        source = model.raw.get("source")
        origin = source.get("model") if isinstance(source, dict) else None
        return EngineInfo(
            model_directory=Path(self.encoder.directory),
            model_source=origin if isinstance(origin, str) else None,
            model_fingerprint=model.fingerprint,
            dim=model.dim,
            similarity=model.similarity,
            max_seq_length=model.max_seq_length,
            device=self.encoder.device,
            index_kind=self.index.kind,
            index_factory=self.index.factory,
            rows=self.index.rows,
        )

    def close(self) -> None:
        """Release the index's actors, if it has any; the engine cannot search afterwards."""
        self.index.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
