"""Re-rank candidate runs with a `Reranker`: the TREC-DL protocol (re-score BM25's top 100)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fastmarco.engine import Reranker
from fastmarco.errors import InputError
from fastmarco.store.formats import RunEntry
from fastmarco.store.passages import PassageStore


def rerank(
    reranker: Reranker,
    candidates: Mapping[str, Sequence[str | None]],
    queries: Mapping[str, str],
    passages: PassageStore,
) -> list[RunEntry]:
    """Score each query's candidates; best first, ties keep candidate order.

    Every candidate passage must be in the collection and every query in `queries`: a missing one is
    an error, never a silent drop.
    """
    missing_queries = [q for q in candidates if q not in queries]
    if missing_queries:
        raise InputError(f"{len(missing_queries)} run queries have no text, e.g. {missing_queries[0]}")
    wanted = sorted({pid for pids in candidates.values() for pid in pids if pid is not None})
    absent = [pid for pid in wanted if pid not in passages]
    if absent:
        raise InputError(f"{passages.path}: {len(absent)} candidate passages are missing, e.g. {absent[0]}")
    texts = passages.texts(wanted)
    pairs = [(qid, pid) for qid, pids in candidates.items() for pid in pids if pid is not None]
    scores = reranker.score([queries[q] for q, _ in pairs], [texts[p] for _, p in pairs])
    entries: list[RunEntry] = []
    start = 0
    for qid, pids in candidates.items():
        kept = [p for p in pids if p is not None]
        own = scores[start : start + len(kept)]
        start += len(kept)
        order = np.argsort(-own, kind="stable")
        entries.extend(RunEntry(qid, kept[j], rank, float(own[j])) for rank, j in enumerate(order, 1))
    return entries
