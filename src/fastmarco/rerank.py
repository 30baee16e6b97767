"""Re-rank candidate runs with a bi-encoder: the TREC-DL protocol (re-score BM25's top 100)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from fastmarco.encoder import Encoder
from fastmarco.formats import RunEntry, read_collection


def rerank(
    encoder: Encoder,
    candidates: Mapping[str, Sequence[str | None]],
    queries: Mapping[str, str],
    collection: str | os.PathLike[str],
) -> list[RunEntry]:
    """Score each query's candidates by embedding similarity; best first, ties keep candidate order.

    Every candidate passage must be in the collection and every query in `queries`: a missing one is
    an error, never a silent drop.
    """
    missing_queries = [q for q in candidates if q not in queries]
    if missing_queries:
        raise ValueError(f"{len(missing_queries)} run queries have no text, e.g. {missing_queries[0]}")
    wanted = {pid for pids in candidates.values() for pid in pids if pid is not None}
    texts = {pid: text for pid, text in read_collection(collection) if pid in wanted}
    absent = wanted - texts.keys()
    if absent:
        raise ValueError(f"{collection}: {len(absent)} candidate passages are missing, e.g. {min(absent)}")
    pid_list = sorted(texts)
    row = {pid: i for i, pid in enumerate(pid_list)}
    passages = encoder.encode([texts[p] for p in pid_list])
    qids = list(candidates)
    query_vectors = encoder.encode([queries[q] for q in qids])
    entries: list[RunEntry] = []
    for qid, vector in zip(qids, query_vectors, strict=True):
        pids = [p for p in candidates[qid] if p is not None]
        scores = passages[[row[p] for p in pids]] @ vector
        order = np.argsort(-scores, kind="stable")
        entries.extend(RunEntry(qid, pids[j], rank, float(scores[j])) for rank, j in enumerate(order, 1))
    return entries
