"""Retrieval runs and ranked hits from an `Engine`: what `fastmarco query` prints or writes (and
what the server will answer), built here so no caller loops over raw result arrays."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from fastmarco.engine import Engine, SearchResult
from fastmarco.store.formats import RunEntry
from fastmarco.store.passages import PassageStore


@dataclass(frozen=True)
class Hit:
    rank: int
    pid: str
    score: float
    text: str | None = None  # with a passage store
    rerank_score: float | None = None  # the cross-encoder's, for a hit re-ranked

    def as_json(self, with_text: bool) -> dict[str, Any]:
        """The hit as `query --json` prints it and `/search` answers it; `text` (null where the
        collection lacks the pid) when a passage store was given; `rerank_score` when re-ranked."""
        return (
            {"rank": self.rank, "pid": self.pid, "score": self.score}
            | ({"text": self.text} if with_text else {})
            | ({"rerank_score": self.rerank_score} if self.rerank_score is not None else {})
        )


def reranked_hits(hits: list[Hit], scores: npt.NDArray[np.float32]) -> list[Hit]:
    """`hits` with the first len(scores) reordered by the cross-encoder's `scores` (best first, ties
    in retrieval order) and the rest after them as they were; ranks renumbered."""
    top = len(scores)
    order = np.argsort(-scores, kind="stable")
    ordered = [replace(hits[i], rerank_score=float(scores[i])) for i in order] + hits[top:]
    return [replace(hit, rank=rank) for rank, hit in enumerate(ordered, 1)]


def hits_of(result: SearchResult, query: int, passages: PassageStore | None = None) -> list[Hit]:
    """The found passages of one query of `result`, best first; empty slots are left out."""
    found = np.flatnonzero(result.scores[query] != -np.inf)
    return [
        Hit(
            rank,
            pid := str(result.ids[query, j]),
            float(result.scores[query, j]),
            passages.get(pid) if passages is not None else None,
        )
        for rank, j in enumerate(found, 1)
    ]


def search_hits(engine: Engine, text: str, k: int, passages: PassageStore | None = None) -> list[Hit]:
    return hits_of(engine.search([text], k), 0, passages)


def retrieve_run(engine: Engine, queries: Mapping[str, str], k: int) -> list[RunEntry]:
    """A run over every query (in the mapping's order): k passages each, where that many exist."""
    qids = list(queries)
    result = engine.search([queries[q] for q in qids], k)
    return [
        RunEntry(qid, hit.pid, hit.rank, hit.score)
        for i, qid in enumerate(qids)
        for hit in hits_of(result, i)
    ]
