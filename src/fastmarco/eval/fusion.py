"""Run fusion: reciprocal rank fusion and normalised score interpolation, with ranx's definitions.

- RRF: a passage's score is the sum over runs of 1 / (k + rank), rank counted from 1 in each run's
  order (trec_eval's: score descending, then passage id descending; a run without scores keeps its
  rank column).
- Weighted sum: each run's scores are normalised per query (min-max: (s - min) / max(max - min, 1e-9);
  z-score: (s - mean) / max(std, 1e-9), population std; or none), multiplied by the run's weight
  (1 each unless given: CombSUM) and summed; a passage absent from a run adds nothing.
A query present in only some runs is fused from those runs. Everything is whole-array NumPy: the runs
are concatenated once, normalised by query groups and summed by (query, passage) key with bincount,
so the only per-entry Python work is hashing the passage ids and building the output entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Literal

import numpy as np
import numpy.typing as npt

from fastmarco.errors import InputError
from fastmarco.eval.metrics import trec_order
from fastmarco.store.formats import RunColumns, RunEntry

Method = Literal["rrf", "wsum"]
Norm = Literal["min-max", "zscore", "none"]
METHODS: tuple[Method, ...] = ("rrf", "wsum")
NORMS: tuple[Norm, ...] = ("min-max", "zscore", "none")
_FLOOR = 1e-9


@dataclass(frozen=True)
class NamedRun:
    """A run's columns and the name errors call it by (its path, or its system's name)."""

    name: str
    columns: RunColumns


def fuse(
    runs: Sequence[NamedRun],
    *,
    method: Method = "rrf",
    rrf_k: int = 60,
    norm: Norm = "min-max",
    weights: Sequence[float] | None = None,
    depth: int = 1000,
) -> list[RunEntry]:
    """The fused run, best first per query, at most `depth` passages a query, queries in first-seen order."""
    if len(runs) < 2:
        raise InputError(f"fusion needs at least two runs, got {len(runs)}")
    if method not in METHODS:
        raise InputError(f"unknown fusion method {method!r}; use {' or '.join(METHODS)}")
    if norm not in NORMS:
        raise InputError(f"unknown normalisation {norm!r}; use {', '.join(NORMS)}")
    if weights is not None and len(weights) != len(runs):
        raise InputError(f"{len(weights)} weights for {len(runs)} runs: give one weight per run")
    if rrf_k < 0:
        raise InputError(f"rrf k must be at least 0, got {rrf_k}")
    if depth < 1:
        raise InputError(f"depth must be at least 1, got {depth}")

    query_codes: dict[str, int] = {}
    ordered = [_ordered(run, query_codes) for run in runs]
    passage_codes, passage_names = _passage_codes([columns.pids for columns, _, _ in ordered])
    value_parts = []
    offset = 0
    for position, (run, (columns, query, rank)) in enumerate(zip(runs, ordered, strict=True)):
        _check_no_repeats(
            run.name, query, passage_codes[offset : offset + len(query)], len(passage_names), columns
        )
        offset += len(query)
        if method == "rrf":
            value_parts.append(1.0 / (rrf_k + rank))
            continue
        if columns.scores is None:
            raise InputError(
                f"{run.name}: a run without scores (MS MARCO format) cannot be fused by score; "
                "use --method rrf"
            )
        weight = 1.0 if weights is None else float(weights[position])
        value_parts.append(weight * _normalised(columns.scores, query, norm))

    query = np.concatenate([query for _, query, _ in ordered])
    keys = query * len(passage_names) + passage_codes
    unique_keys, inverse = np.unique(keys, return_inverse=True)
    fused = np.asarray(np.bincount(inverse, weights=np.concatenate(value_parts)), dtype=np.float64)
    fused_query, fused_passage = np.divmod(unique_keys, len(passage_names))
    order = trec_order(fused_query, fused, passage_names[fused_passage])
    fused_query, fused_passage, fused = fused_query[order], fused_passage[order], fused[order]
    starts = np.searchsorted(fused_query, np.arange(len(query_codes) + 1))
    entries: list[RunEntry] = []
    for code, qid in enumerate(query_codes):
        start, stop = int(starts[code]), min(int(starts[code + 1]), int(starts[code]) + depth)
        pids = passage_names[fused_passage[start:stop]].tolist()
        entries += map(RunEntry, repeat(qid), pids, range(1, len(pids) + 1), fused[start:stop].tolist())
    return entries


def _ordered(
    run: NamedRun, query_codes: dict[str, int]
) -> tuple[RunColumns, npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """The run's columns sorted by query then rank (trec_eval's order), the query codes and 1-based ranks.
    A passage twice for one query is an error naming the run."""
    columns = run.columns
    query = _query_codes(columns.qids, query_codes)
    if columns.scores is not None:
        order = trec_order(query, columns.scores, columns.pids)
    else:
        order = np.lexsort((columns.ranks, query))
    query = query[order]
    columns = RunColumns(
        columns.qids[order],
        columns.pids[order],
        columns.ranks[order],
        None if columns.scores is None else columns.scores[order],
    )
    starts = np.flatnonzero(np.r_[True, query[1:] != query[:-1]])
    if columns.scores is not None:
        rank = np.arange(len(query)) - np.repeat(starts, np.diff(np.r_[starts, len(query)])) + 1
    else:
        rank = columns.ranks
    return columns, query, rank.astype(np.float64)


def _query_codes(qids: npt.NDArray[np.object_], codes: dict[str, int]) -> npt.NDArray[np.int64]:
    """Query codes (first seen, first numbered) of a column; a run lists its queries in blocks, so
    only the first entry of each block goes through the dictionary."""
    if not len(qids):
        return np.zeros(0, dtype=np.int64)
    heads = np.flatnonzero(np.r_[True, qids[1:] != qids[:-1]])
    head_codes = np.fromiter((codes.setdefault(q, len(codes)) for q in qids[heads]), np.int64, len(heads))
    return np.repeat(head_codes, np.diff(np.r_[heads, len(qids)]))


def _passage_codes(
    columns: list[npt.NDArray[np.object_]],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.object_]]:
    """Dense codes of the passage ids of all runs (concatenated) and the id of each code.

    Ids are numbered by their string hash, which Python caches on the strings; the codes are then
    checked against the strings (equal codes, equal ids), and only a hash collision makes it number
    them through a dictionary instead."""
    pids = np.concatenate(columns) if columns else np.zeros(0, dtype=object)
    hashes = np.fromiter(map(hash, pids), np.int64, len(pids))
    _, first, codes = np.unique(hashes, return_index=True, return_inverse=True)
    names = pids[first]
    if not (names[codes] == pids).all():
        seen: dict[str, int] = {}
        codes = np.fromiter((seen.setdefault(p, len(seen)) for p in pids), np.int64, len(pids))
        names = np.array(list(seen), dtype=object)
    return codes.astype(np.int64), names


def _check_no_repeats(
    name: str, query: npt.NDArray[np.int64], passage: npt.NDArray[np.int64], count: int, columns: RunColumns
) -> None:
    """A passage listed twice for one query is an error naming the run, the query and the passage."""
    keys = query * count + passage
    order = np.argsort(keys)
    repeated = np.flatnonzero(keys[order][1:] == keys[order][:-1])
    if len(repeated):
        row = order[repeated[0]]
        raise InputError(
            f"{name}: query {columns.qids[row]} ranks passage {columns.pids[row]} more than once"
        )


def _normalised(
    score: npt.NDArray[np.float64], query: npt.NDArray[np.int64], norm: Norm
) -> npt.NDArray[np.float64]:
    """Per-query normalised scores; `query` is sorted (the groups are contiguous)."""
    if norm == "none" or not len(score):
        return score
    starts = np.flatnonzero(np.r_[True, query[1:] != query[:-1]])
    sizes = np.diff(np.r_[starts, len(score)])
    if norm == "min-max":
        low = np.repeat(np.minimum.reduceat(score, starts), sizes)
        high = np.repeat(np.maximum.reduceat(score, starts), sizes)
        scaled: npt.NDArray[np.float64] = (score - low) / np.maximum(high - low, _FLOOR)
        return scaled
    mean = np.add.reduceat(score, starts) / sizes
    centred = score - np.repeat(mean, sizes)
    std = np.sqrt(np.add.reduceat(centred * centred, starts) / sizes)
    standardised: npt.NDArray[np.float64] = centred / np.repeat(np.maximum(std, _FLOOR), sizes)
    return standardised
