"""The importable query engine: text in, ranked passages out, everything loaded once.

`Engine` is the one seam the front ends use (serve and its batcher, mine, the CLI, the demo): its
verbs tokenize, embed, search by texts or vectors, look up stored vectors by pid, re-rank with a
cross-encoder (when opened with one) and describe what is loaded; nothing above it reaches into the
model or the index. Its re-ranking is a `Reranker`, which `fastmarco rerank` and the experiment's
re-rank systems open alone (re-ranking a run needs no index). `Tokenized`, `PairTokens` and
`SearchResult` are re-exported here for them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fastmarco.errors import IndexMismatchError, InputError
from fastmarco.model.cross_encoder import CrossEncoderScorer, PairTokens
from fastmarco.model.encoder import Encoder, Tokenized
from fastmarco.model.runtime import Device
from fastmarco.model.scorer import Scorer, open_scorer
from fastmarco.search.backends import SearchIndex, SearchResult
from fastmarco.search.groups import open_search_index
from fastmarco.store.passages import PassageStore

__all__ = ["Engine", "EngineInfo", "PairTokens", "Reranker", "SearchResult", "Tokenized"]


class Reranker:
    """A re-ranking model opened once: a cross-encoder reading each (query, passage) pair, or a
    bi-encoder scoring pairs by embedding similarity (the manifest says which). Scores are what
    `CrossEncoder.predict` (or the embeddings' similarity) gives; every pair of a call is batched
    together, across queries, under the model's token budget."""

    def __init__(self, scorer: Scorer, directory: Path) -> None:
        self.scorer = scorer
        self.directory = directory

    @property
    def device(self) -> str:
        return self.scorer.device

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        device: Device = "auto",
        threads: int = 0,
        runtime: str = "auto",
    ) -> Reranker:
        """A bi-encoder or cross-encoder export (`fastmarco rerank --model`)."""
        return cls(open_scorer(directory, device, threads=threads, runtime=runtime), Path(directory))

    @classmethod
    def open_cross_encoder(
        cls,
        directory: str | os.PathLike[str],
        *,
        device: Device = "auto",
        threads: int = 0,
        runtime: str = "auto",
    ) -> Reranker:
        """A cross-encoder export; another kind is an error naming it (`serve --cross-encoder`)."""
        scorer = CrossEncoderScorer.open(directory, device=device, threads=threads, runtime=runtime)
        return cls(scorer, Path(directory))

    @property
    def cross_encoder(self) -> CrossEncoderScorer | None:
        return self.scorer if isinstance(self.scorer, CrossEncoderScorer) else None

    def score(self, queries: Sequence[str], passages: Sequence[str]) -> npt.NDArray[np.float32]:
        """The score of pair i = (queries[i], passages[i]), (n,) float32, higher is more relevant."""
        return self.scorer.score(queries, passages)

    def rerank(self, query: str, passages: Sequence[str]) -> npt.NDArray[np.float32]:
        """The score of each passage for `query`, in the order given."""
        return self.score([query] * len(passages), passages)

    def rerank_pids(self, query: str, pids: Sequence[str], passages: PassageStore) -> list[tuple[str, float]]:
        """(pid, score) best first for the passages `pids` of `passages`; ties keep the order given. A
        pid the collection lacks is an error naming it."""
        texts = passages.texts(pids)
        scores = self.rerank(query, [texts[p] for p in pids])
        order = np.argsort(-scores, kind="stable")
        return [(pids[i], float(scores[i])) for i in order]


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
    cross_encoder: Path | None = None  # the re-ranking model's directory, where one is loaded


class Engine:
    """Encoder + index + id map. `search` is safe to call from many threads at once: the ONNX
    Runtime session, the faiss index and the native re-scoring are all read-only after `open`.

    `threads` is the budget of one search call: ONNX Runtime's intra-op threads and the native
    search's threads (0: every core). Give concurrent callers a share each so they do not
    oversubscribe the cores. faiss's own candidate search uses its process-wide OpenMP pool.
    The index is one INDEX_DIR or a grouped one (`fastmarco index --groups`), whose groups are
    searched here or, with ray=, by Ray actors (see GroupedIndex.open).
    """

    def __init__(
        self, encoder: Encoder, index: SearchIndex, threads: int = 0, reranker: Reranker | None = None
    ) -> None:
        self.encoder = encoder
        self.index = index
        self.threads = threads
        self.reranker = reranker  # a cross-encoder's, where the engine was opened with one

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
        cross_encoder: str | os.PathLike[str] | None = None,
        runtime: str = "auto",
    ) -> Engine:
        """`model` defaults to the model directory recorded when the shards were encoded; verify=False
        skips hashing the shards (see VectorIndex.open); ray=True or an address searches a grouped
        index's groups on Ray actors (call `close` to release them); `cross_encoder` (an exported
        cross-encoder directory) enables `rerank`; `runtime` runs both models (fastmarco.model.runtimes)."""
        if threads < 0:
            raise InputError(f"threads must be 0 (every core) or positive, got {threads}")
        index = open_search_index(index_dir, nprobe=nprobe, verify=verify, ray=ray)
        try:
            model_dir = model or index.model_directory
            if model_dir is None:
                raise IndexMismatchError(f"{index_dir}: no model directory recorded; pass model=")
            encoder = Encoder.open(
                model_dir, device=device, busy_wait=False, threads=threads, runtime=runtime
            )
            if index.model_fingerprint is not None and encoder.fingerprint != index.model_fingerprint:
                raise IndexMismatchError(
                    f"{index_dir} was built from embeddings of another model, or another export of it, "
                    f"than {model_dir} (fingerprints differ)"
                )
            reranker = None
            if cross_encoder is not None:
                reranker = Reranker.open_cross_encoder(
                    cross_encoder, device=device, threads=threads, runtime=runtime
                )
        except BaseException:
            index.close()
            raise
        return cls(encoder, index, threads, reranker)

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

    def _reranker(self) -> Reranker:
        if self.reranker is None:
            raise InputError(
                "this engine has no cross-encoder: open it with cross_encoder= (serve --cross-encoder)"
            )
        return self.reranker

    def _cross_encoder(self) -> CrossEncoderScorer:
        scorer = self._reranker().cross_encoder
        assert scorer is not None  # Engine.open opens only a cross-encoder as its reranker
        return scorer

    def tokenize_pairs(self, query: str, passages: Sequence[str]) -> PairTokens:
        """The cross-encoder's tokens of (query, passage) for each passage, for `score_pairs`."""
        return self._cross_encoder().tokenize_pairs([query] * len(passages), passages)

    def score_pairs(self, pairs: PairTokens) -> npt.NDArray[np.float32]:
        """Cross-encoder scores of tokenized pairs (several queries' pairs may be concatenated)."""
        return self._cross_encoder().score_tokens(pairs)

    def rerank(self, query: str, passages: Sequence[str]) -> npt.NDArray[np.float32]:
        """The cross-encoder's score of each passage for `query`, in the order given (what
        `CrossEncoder.predict` returns for the pairs)."""
        return self._reranker().rerank(query, passages)

    def rerank_pids(self, query: str, pids: Sequence[str], passages: PassageStore) -> list[tuple[str, float]]:
        """(pid, score) best first for the passages `pids` of `passages`; ties keep the order given. A
        pid the collection lacks is an error naming it."""
        return self._reranker().rerank_pids(query, pids, passages)

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
            cross_encoder=None if self.reranker is None else self.reranker.directory,
        )

    def close(self) -> None:
        """Release the index's actors, if it has any; the engine cannot search afterwards."""
        self.index.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
