"""Retrieval systems that propose candidates: a fastmarco index (a bi-encoder over a shard set) or
BM25 over the collection. Each answers one block of queries at a time."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from fastmarco.engine import Engine
from fastmarco.errors import InputError


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

    @property
    def fingerprint(self) -> str:
        """What identifies the system's answers: a rerun with another one is another job."""
        ...

    def retrieve(self, texts: Sequence[str], k: int, positives: Sequence[Sequence[str]]) -> list[Retrieved]:
        """Top k of each query; positives[i] are query i's positive pids (scored where possible)."""
        ...


class IndexSystem:
    """A bi-encoder index, single or grouped. Positives are scored from their stored vectors, exactly
    as the search scores what it retrieves, so a margin compares like with like."""

    scores_positives = True

    def __init__(self, name: str, engine: Engine) -> None:
        self.name = name
        self.engine = engine

    @classmethod
    def open(cls, name: str, index_dir: str | os.PathLike[str], *, threads: int = 0) -> IndexSystem:
        return cls(name, Engine.open(index_dir, device="auto", threads=threads))

    @property
    def fingerprint(self) -> str:
        return self.engine.describe().model_fingerprint

    def _vectors(self, pids: Sequence[str]) -> npt.NDArray[np.float32]:
        vectors, found = self.engine.vectors_of(pids)
        if not found.all():
            missing = [pids[i] for i in np.flatnonzero(~found)[:3]]
            raise InputError(
                f"system '{self.name}': positives {missing} are not in its shard set; encode the whole "
                "collection (positives included) into it"
            )
        return vectors

    def retrieve(self, texts: Sequence[str], k: int, positives: Sequence[Sequence[str]]) -> list[Retrieved]:
        vectors = self.engine.embed(texts)
        result = self.engine.search_vectors(vectors, k)
        flat = [p for pids in positives for p in pids]
        positive_vectors = self._vectors(flat) if flat else np.zeros((0, vectors.shape[1]), np.float32)
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

    def __init__(
        self, collection: str | os.PathLike[str], show_progress: bool = False, format: str = "auto"
    ) -> None:
        from fastmarco.eval.bm25 import BM25Index

        self.index = BM25Index.build(collection, show_progress=show_progress, format=format)

    @property
    def fingerprint(self) -> str:
        return self.index.fingerprint

    def retrieve(self, texts: Sequence[str], k: int, positives: Sequence[Sequence[str]]) -> list[Retrieved]:
        return [Retrieved(pids, scores) for pids, scores in self.index.search(texts, k)]
