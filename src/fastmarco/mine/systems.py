"""Retrieval systems that propose candidates: a fastmarco index (a bi-encoder over a shard set) or
BM25 over the collection. Each answers one block of queries at a time."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from fastmarco.errors import InputError
from fastmarco.search.backends import VectorIndex
from fastmarco.search.engine import Engine


@dataclass
class Retrieved:
    """One query's candidates from one system, best first, and (where the system can score any
    passage) its scores for the query's positives."""

    pids: list[str]
    scores: npt.NDArray[np.float32]
    positive_scores: npt.NDArray[np.float32] | None = None


class System(Protocol):
    name: str
    scores_positives: bool  # can it score passages it did not retrieve (the positives)?

    def retrieve(self, texts: Sequence[str], k: int, positives: Sequence[Sequence[str]]) -> list[Retrieved]:
        """Top k of each query; positives[i] are query i's positive pids (scored where possible)."""
        ...


class IndexSystem:
    """A bi-encoder index. Positives are scored from their stored vectors, exactly as the search
    scores what it retrieves, so a margin compares like with like."""

    scores_positives = True

    def __init__(self, name: str, engine: Engine) -> None:
        self.name = name
        self.engine = engine
        if not isinstance(engine.index, VectorIndex):
            raise InputError(
                f"--system {name}: mining reads stored vectors from one INDEX_DIR; a grouped index "
                "cannot be mined yet (build a single index over the same shards)"
            )
        shard_set = engine.index.shard_set
        ids = shard_set.ids()
        self._int_ids = ids.dtype != object
        self._order = np.argsort(ids, kind="stable")
        self._sorted_ids = ids[self._order]
        self._views = list(shard_set.shard_vectors())
        self._offsets = np.asarray(shard_set.offsets, dtype=np.int64)

    @classmethod
    def open(cls, name: str, index_dir: str | os.PathLike[str], *, threads: int = 0) -> IndexSystem:
        return cls(name, Engine.open(index_dir, device="auto", threads=threads))

    @property
    def fingerprint(self) -> str:
        return self.engine.encoder.fingerprint

    def _rows(self, pids: Sequence[str]) -> npt.NDArray[np.int64]:
        keys: npt.NDArray[Any]
        if self._int_ids:
            if not all(p.isdigit() for p in pids):
                bad = next(p for p in pids if not p.isdigit())
                raise InputError(f"system '{self.name}': positive pid {bad!r} is not an integer id")
            keys = np.asarray([int(p) for p in pids], dtype=np.int64)
        else:
            keys = np.asarray(list(pids), dtype=object)
        where = np.searchsorted(self._sorted_ids, keys)
        found = (where < len(self._sorted_ids)) & (
            self._sorted_ids[np.minimum(where, len(self._sorted_ids) - 1)] == keys
        )
        if not found.all():
            missing = [pids[i] for i in np.flatnonzero(~found)[:3]]
            raise InputError(
                f"system '{self.name}': positives {missing} are not in its shard set; encode the whole "
                "collection (positives included) into it"
            )
        rows: npt.NDArray[np.int64] = self._order[where]
        return rows

    def _vectors(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        shard = np.searchsorted(self._offsets, rows, side="right") - 1
        out = np.empty((len(rows), self.engine.index.dim), dtype=np.float32)
        for i, (s, row) in enumerate(zip(shard, rows, strict=True)):
            out[i] = self._views[s][row - self._offsets[s]]
        return out

    def retrieve(self, texts: Sequence[str], k: int, positives: Sequence[Sequence[str]]) -> list[Retrieved]:
        vectors = self.engine.encoder.encode(texts)
        result = self.engine.index.search(vectors, k, threads=self.engine.threads)
        flat = [p for pids in positives for p in pids]
        positive_vectors = (
            self._vectors(self._rows(flat)) if flat else np.zeros((0, vectors.shape[1]), np.float32)
        )
        found: list[Retrieved] = []
        start = 0
        for i in range(len(texts)):
            present = np.flatnonzero(result.scores[i] != -np.inf)
            own = positive_vectors[start : start + len(positives[i])]
            start += len(positives[i])
            found.append(
                Retrieved(
                    [str(p) for p in result.ids[i, present]],
                    result.scores[i, present].astype(np.float32),
                    (own @ vectors[i]).astype(np.float32),
                )
            )
        return found


class BM25System:
    """BM25 over the collection (built in memory once). It scores only what it retrieves, so it
    proposes candidates for a cross-encoder to score."""

    name = "bm25"
    scores_positives = False

    def __init__(self, collection: str | os.PathLike[str], show_progress: bool = False) -> None:
        from fastmarco.eval.bm25 import BM25Index

        self.index = BM25Index.build(collection, show_progress=show_progress)

    def retrieve(self, texts: Sequence[str], k: int, positives: Sequence[Sequence[str]]) -> list[Retrieved]:
        return [Retrieved(pids, scores) for pids, scores in self.index.search(texts, k)]
