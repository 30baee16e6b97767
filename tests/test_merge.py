from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastmarco import MISSING_ID, merge_topk


@st.composite
def shard_lists(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[tuple[float, int]]]]:
    nshard = draw(st.integers(1, 6))
    nq = draw(st.integers(1, 3))
    k = draw(st.integers(1, 12))
    sizes = [draw(st.integers(0, 40)) for _ in range(nshard)]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    scores = np.full((nshard, nq, k), -np.inf, dtype=np.float32)
    ids = np.full((nshard, nq, k), MISSING_ID, dtype=np.int64)
    everything: list[list[tuple[float, int]]] = [[] for _ in range(nq)]
    for s, size in enumerate(sizes):
        for q in range(nq):
            # few distinct scores, so ties across shards are common
            values = draw(st.lists(st.integers(-3, 3), min_size=size, max_size=size))
            entries = sorted(
                ((float(v), local) for local, v in enumerate(values)), key=lambda e: (-e[0], e[1])
            )
            kept = entries[:k]
            for j, (score, local) in enumerate(kept):
                scores[s, q, j] = score
                ids[s, q, j] = local
            everything[q].extend((score, local + int(offsets[s])) for score, local in entries)
    return scores, ids, offsets, everything


@settings(max_examples=300, deadline=None)
@given(shard_lists())
def test_merge_equals_global_sort(case: tuple[np.ndarray, np.ndarray, np.ndarray, list]) -> None:
    scores, ids, offsets, everything = case
    k = scores.shape[2]
    out_scores, out_ids = merge_topk(scores, ids, offsets)
    for q, entries in enumerate(everything):
        best = sorted(entries, key=lambda e: (-e[0], e[1]))[:k]
        expected_ids = [gid for _, gid in best] + [MISSING_ID] * (k - len(best))
        expected_scores = [score for score, _ in best] + [-np.inf] * (k - len(best))
        assert out_ids[q].tolist() == expected_ids
        assert out_scores[q].tolist() == expected_scores


@settings(max_examples=100, deadline=None)
@given(shard_lists(), st.randoms())
def test_merge_does_not_depend_on_shard_order(case: tuple, shuffle: object) -> None:
    scores, ids, offsets, _ = case
    order = list(range(scores.shape[0]))
    shuffle.shuffle(order)  # type: ignore[attr-defined]
    a = merge_topk(scores, ids, offsets)
    b = merge_topk(scores[order], ids[order], offsets[order])
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_unsorted_input_is_rejected() -> None:
    scores = np.array([[[1.0, 2.0]]], dtype=np.float32)
    ids = np.array([[[0, 1]]], dtype=np.int64)
    with pytest.raises(ValueError, match="shard 0, query 0 is not sorted best-first"):
        merge_topk(scores, ids)


def test_sentinel_before_result_is_rejected() -> None:
    scores = np.array([[[-np.inf, 2.0]]], dtype=np.float32)
    ids = np.array([[[MISSING_ID, 1]]], dtype=np.int64)
    with pytest.raises(ValueError, match="not sorted best-first"):
        merge_topk(scores, ids)


def test_wrong_dtype_is_an_actionable_error() -> None:
    with pytest.raises(ValueError, match="scores must have dtype float32"):
        merge_topk(np.zeros((1, 1, 1)), np.zeros((1, 1, 1), np.int64))
