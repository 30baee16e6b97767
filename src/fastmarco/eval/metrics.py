"""Retrieval metrics with the official definitions.

- MRR@k is the MS MARCO script's: reciprocal rank of the first relevant passage within the top k,
  averaged over *every* query of the qrels (a query missing from the run scores 0). A run with the
  same passage twice for a query is refused, as the official script refuses it.
- nDCG@k, recall@k and MAP follow trec_eval: gains are the grades (negative grades count 0), the
  ideal ranking uses every judged passage, and only queries in both qrels and run are averaged
  unless include_missing (trec_eval -c).
- Order inside a query: a run with scores (TREC) is sorted as trec_eval sorts it, by score
  descending and then by passage id descending (its tie-break); a run without scores (MS MARCO)
  is taken by its rank column.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fastmarco.errors import InputError
from fastmarco.store.formats import RunColumns, RunEntry, columns_from_entries

Qrels = Mapping[str, Mapping[str, int]]
RankedRun = Mapping[str, Sequence[str | None]]

METRICS = ("mrr@10", "ndcg@10", "recall@100", "recall@1000", "map")


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    queries_in_qrels: int
    queries_in_run: int
    queries_evaluated: int


def rank_entries(entries: Iterable[RunEntry], source: str = "run") -> dict[str, list[str | None]]:
    """qid -> pids best first for parsed entries; see `rank_columns`."""
    return rank_columns(columns_from_entries(list(entries)), source)


def rank_columns(run: RunColumns, source: str = "run") -> dict[str, list[str | None]]:
    """qid -> pids best first (see the module docstring); a repeated (qid, pid) is an error.

    Rank-column runs keep the positions their ranks give, as the official script does, so a gap in
    the ranks leaves an empty (None) position; a rank below 1 or a repeated rank is an error.
    """
    index: dict[str, int] = {}
    codes = np.fromiter(
        (index.setdefault(q, len(index)) for q in run.qids), dtype=np.int64, count=len(run.qids)
    )
    qids = list(index)
    if run.scores is not None:
        order = trec_order(codes, run.scores, run.pids)
    else:
        if (run.ranks < 1).any():
            bad = int(np.argmax(run.ranks < 1))
            raise InputError(
                f"{source}: query {run.qids[bad]} passage {run.pids[bad]} has rank {run.ranks[bad]};"
                " ranks start at 1"
            )
        order = np.lexsort((run.ranks, codes))
        key_q, key_r = codes[order], run.ranks[order]
        repeated = np.flatnonzero((key_q[1:] == key_q[:-1]) & (key_r[1:] == key_r[:-1]))
        if len(repeated):
            row = order[repeated[0]]
            raise InputError(f"{source}: query {run.qids[row]} has rank {run.ranks[row]} twice")
    sorted_codes = codes[order]
    bounds = np.searchsorted(sorted_codes, np.arange(len(qids) + 1))
    pids = run.pids[order]
    ranked: dict[str, list[str | None]] = {}
    for code, qid in enumerate(qids):
        start, stop = int(bounds[code]), int(bounds[code + 1])
        members: list[str | None] = pids[start:stop].tolist()
        if len(set(members)) != len(members):
            duplicate = next(pid for pid, count in Counter(members).items() if count > 1)
            raise InputError(f"{source}: query {qid} ranks passage {duplicate} more than once")
        if run.scores is None and int(run.ranks[order[stop - 1]]) != stop - start:  # gaps in the ranks
            positions: list[str | None] = [None] * int(run.ranks[order[stop - 1]])
            for row, pid in zip(order[start:stop], members, strict=True):
                positions[int(run.ranks[row]) - 1] = pid
            members = positions
        ranked[qid] = members
    return ranked


def trec_order(
    codes: npt.NDArray[np.int64], scores: npt.NDArray[np.float64], pids: npt.NDArray[np.object_]
) -> npt.NDArray[np.intp]:
    """The order trec_eval ranks entries in: by query code, score descending, then passage id
    descending (its tie-break). Entries already in that order (run files as written) are not sorted
    again, and only the ids of tied entries are sorted as strings."""
    next_query, same_query = codes[1:] > codes[:-1], codes[1:] == codes[:-1]
    if (next_query | (same_query & (scores[1:] <= scores[:-1]))).all():  # as written files usually are
        order = np.arange(len(codes))
    else:
        order = np.lexsort((-scores, codes))
    key_q, key_s = codes[order], scores[order]
    same = (key_q[1:] == key_q[:-1]) & (key_s[1:] == key_s[:-1])
    if not same.any():
        return order
    tied = np.zeros(len(order), dtype=bool)
    tied[1:] |= same
    tied[:-1] |= same
    rows = order[tied]
    _, position = np.unique(pids[rows].astype(str), return_inverse=True)
    descending_id = np.zeros(len(scores), dtype=np.int64)
    descending_id[rows] = -position
    return np.lexsort((descending_id, -scores, codes))


def _grades(qrels: Qrels, run: RankedRun, qids: list[str], depth: int) -> npt.NDArray[np.int64]:
    """(len(qids), depth) grades of the ranked passages; unjudged 0, beyond the run -1 (padding)."""
    grades = np.full((len(qids), max(depth, 1)), -1, dtype=np.int64)
    for i, qid in enumerate(qids):
        judged = qrels.get(qid, {})
        ranked = run.get(qid, ())[:depth]
        grades[i, : len(ranked)] = [judged.get(pid, 0) if pid is not None else 0 for pid in ranked]
    return grades


def parse_metric(metric: str) -> tuple[str, int | None]:
    """(name, cut-off) of a metric such as "ndcg@10" or "map"; InputError for anything else."""
    name, _, cut = metric.partition("@")
    if (
        name not in ("mrr", "ndcg", "recall", "map")
        or (name != "map") != bool(cut)
        or not (cut or "1").isdigit()
    ):
        raise InputError(f"unknown metric {metric!r}; use mrr@K, ndcg@K, recall@K or map")
    return name, int(cut) if cut else None


def evaluate(
    qrels: Qrels,
    run: RankedRun,
    metrics: Sequence[str] = METRICS,
    *,
    relevance_level: int = 1,
    include_missing: bool = False,
) -> Evaluation:
    """Compute `metrics` (names like "mrr@10", "ndcg@10", "recall@1000", "map").

    relevance_level: the lowest grade that counts as relevant for MRR, recall and MAP (TREC-DL
    uses 2 for recall and MAP passage ranking; MS MARCO qrels hold only grade 1).
    """
    parsed = [(metric, *parse_metric(metric)) for metric in metrics]
    judged_qids = sorted(qrels)
    trec_qids = judged_qids if include_missing else [q for q in judged_qids if q in run]
    depth = max((len(v) for v in run.values()), default=1)
    mrr_depth = max((cut or 0 for _, name, cut in parsed if name == "mrr"), default=0)

    results: dict[str, npt.NDArray[np.float64]] = {}
    if any(name == "mrr" for _, name, _ in parsed):
        top = _grades(qrels, run, judged_qids, mrr_depth) >= relevance_level
        first = np.where(top.any(axis=1), top.argmax(axis=1) + 1, 0)
        for metric, name, cut in parsed:
            if name == "mrr":
                assert cut is not None
                results[metric] = np.where((first > 0) & (first <= cut), 1.0 / np.maximum(first, 1), 0.0)

    grades = _grades(qrels, run, trec_qids, depth)
    relevant = grades >= relevance_level
    num_relevant = np.array(
        [sum(g >= relevance_level for g in qrels[q].values()) for q in trec_qids], dtype=np.float64
    )
    positions = np.arange(1, grades.shape[1] + 1, dtype=np.float64)
    for metric, name, cut in parsed:
        if name == "ndcg":
            assert cut is not None
            discount = 1.0 / np.log2(positions[:cut] + 1)
            dcg = (np.clip(grades[:, :cut], 0, None) * discount[: grades[:, :cut].shape[1]]).sum(axis=1)
            ideal = np.zeros(len(trec_qids))
            for i, qid in enumerate(trec_qids):
                best = sorted((g for g in qrels[qid].values() if g > 0), reverse=True)[:cut]
                ideal[i] = sum(g / math.log2(r + 2) for r, g in enumerate(best))
            results[metric] = np.divide(dcg, ideal, out=np.zeros_like(dcg), where=ideal > 0)
        elif name == "recall":
            found = relevant[:, :cut].sum(axis=1)
            results[metric] = np.divide(
                found, num_relevant, out=np.zeros(len(trec_qids)), where=num_relevant > 0
            )
        elif name == "map":
            precision = np.cumsum(relevant, axis=1) / positions
            total = (precision * relevant).sum(axis=1)
            results[metric] = np.divide(
                total, num_relevant, out=np.zeros(len(trec_qids)), where=num_relevant > 0
            )

    per_query: dict[str, dict[str, float]] = {}
    for metric, name, _ in parsed:
        qids = judged_qids if name == "mrr" else trec_qids
        for qid, value in zip(qids, results[metric], strict=True):
            per_query.setdefault(qid, {})[metric] = float(value)
    return Evaluation(
        metrics={m: float(results[m].mean()) if len(results[m]) else 0.0 for m, _, _ in parsed},
        per_query=per_query,
        queries_in_qrels=len(judged_qids),
        queries_in_run=len(run),
        queries_evaluated=len(trec_qids),
    )
