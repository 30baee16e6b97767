from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from reference import assert_topk_matches, brute_force_scores, brute_force_topk

from fastmarco import MISSING_ID, InputError, ShardSet, ShardWriter, _native, exact_search
from fastmarco.search.exact import search_shards

DTYPES = {"fp16": np.float16, "fp32": np.float32}


def integer_data(rng: np.random.Generator, n: int, dim: int, dtype: str) -> np.ndarray:
    """Small integers: exact in fp16 and in every fp32 sum, with many exact ties."""
    return rng.integers(-3, 4, size=(n, dim)).astype(DTYPES[dtype])


def write_set(tmp_path: Path, rows: np.ndarray, nshard: int, dtype: str) -> ShardSet:
    per_shard = max(1, math.ceil(len(rows) / nshard))
    with ShardWriter(tmp_path / "set", dim=rows.shape[1], dtype=dtype, rows_per_shard=per_shard) as writer:
        writer.add(rows, np.arange(len(rows)))
    return ShardSet.open(tmp_path / "set", verify="checksum")


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
@pytest.mark.parametrize("dim", [1, 7, 384, 768])
@pytest.mark.parametrize("k", [1, 10, 1000])
@pytest.mark.parametrize("nshard", [1, 2, 3, 5])
def test_integer_data_ids_identical_to_numpy(
    tmp_path: Path, dtype: str, dim: int, k: int, nshard: int, simd: str
) -> None:
    rng = np.random.default_rng(dim * 1000 + k + nshard)
    rows = integer_data(rng, 1500, dim, dtype)
    queries = rng.integers(-3, 4, size=(9, dim)).astype(np.float32)
    shard_set = write_set(tmp_path, rows, nshard, dtype)
    assert len(shard_set.files) == nshard
    scores, ids = search_shards(shard_set, queries, k, "ip")
    ref_scores, ref_ids = brute_force_topk(brute_force_scores(queries, rows, "ip"), k)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(scores, ref_scores.astype(np.float32))


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
@pytest.mark.parametrize("metric", ["ip", "cosine"])
@pytest.mark.parametrize("dim", [1, 7, 384, 768])
@pytest.mark.parametrize("k", [1, 10, 1000])
def test_gaussian_data_matches_numpy(
    tmp_path: Path, dtype: str, metric: str, dim: int, k: int, simd: str
) -> None:
    rng = np.random.default_rng(dim + k)
    rows = rng.standard_normal((2000, dim)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    rows = rows.astype(DTYPES[dtype])
    queries = rng.standard_normal((7, dim)).astype(np.float32)
    shard_set = write_set(tmp_path, rows, 3, dtype)
    scores, ids = search_shards(shard_set, queries, k, metric)
    atol = 1e-3 if dtype == "fp16" else 1e-4
    if metric == "ip":
        atol *= float(np.linalg.norm(queries, axis=1).max())
    assert_topk_matches(scores, ids, brute_force_scores(queries, rows, metric), k, atol)


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
@pytest.mark.parametrize("nq", [1, 5, 6, 7, 13])
def test_thread_count_and_query_tiles_do_not_change_results(threads: int, nq: int, simd: str) -> None:
    rng = np.random.default_rng(nq)
    rows = integer_data(rng, 1037, 33, "fp16")
    queries = rng.integers(-3, 4, size=(nq, 33)).astype(np.float32)
    scores, ids = exact_search(queries, rows, 50, threads=threads)
    ref_scores, ref_ids = brute_force_topk(brute_force_scores(queries, rows, "ip"), 50)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(scores, ref_scores.astype(np.float32))


@pytest.mark.parametrize("n", [0, 1, 15, 17, 40])
def test_k_larger_than_corpus_pads_with_sentinels(n: int, simd: str) -> None:
    rng = np.random.default_rng(n)
    rows = rng.standard_normal((n, 16)).astype(np.float16)
    scores, ids = exact_search(rng.standard_normal((3, 16)), rows, 100)
    assert (ids[:, :n] >= 0).all()
    assert (ids[:, n:] == MISSING_ID).all()
    assert np.isneginf(scores[:, n:]).all()
    assert sorted(ids[0, :n].tolist()) == list(range(n))


def test_cosine_zero_vectors_score_zero(simd: str) -> None:
    rows = np.array([[0, 0], [1, 0], [0, 2]], dtype=np.float32)
    scores, ids = exact_search(np.array([[3.0, 0.0]]), rows, 3, "cosine")
    np.testing.assert_array_equal(ids, [[1, 0, 2]])
    np.testing.assert_allclose(scores, [[1.0, 0.0, 0.0]])
    zero_query_scores, zero_query_ids = exact_search(np.zeros((1, 2)), rows, 3, "cosine")
    np.testing.assert_array_equal(zero_query_scores, [[0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(zero_query_ids, [[0, 1, 2]])


def test_search_reads_shards_zero_copy(tmp_path: Path) -> None:
    rows = np.arange(24, dtype=np.float16).reshape(6, 4)
    shard_set = write_set(tmp_path, rows, 2, "fp16")
    view = next(shard_set.shard_vectors())
    assert not view.flags.writeable
    assert not view.flags.owndata
    np.testing.assert_array_equal(view, rows[:3])
    with pytest.raises(ValueError, match="read-only"):
        view[0, 0] = 1


@pytest.mark.parametrize(
    ("queries", "rows", "k", "metric", "message"),
    [
        (np.ones((2, 3)), np.ones((4, 5), np.float32), 1, "ip", "queries have dim 3 but the rows have dim 5"),
        (np.ones((2, 3)), np.ones((4, 3), np.float64), 1, "ip", "rows must be float32 or float16"),
        (np.ones((2, 3)), np.ones((4, 3), np.float32), 0, "ip", "k must be positive"),
        (np.ones((2, 3)), np.ones((4, 3), np.float32), 1, "l2", "metric must be 'ip'"),
        (np.full((2, 3), np.nan), np.ones((4, 3), np.float32), 1, "ip", "query 0 contains NaN"),
        (np.ones((2, 3), np.int64), np.ones((4, 3), np.float32), 1, "ip", "queries must be floating point"),
        (np.ones((2, 3)), np.ones((4, 6), np.float32)[:, ::2], 1, "ip", "rows must be C-contiguous"),
    ],
)
def test_bad_arguments_raise_actionable_errors(queries, rows, k, metric, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        exact_search(queries, rows, k, metric)


def test_refine_refuses_output_arrays_it_cannot_write_densely() -> None:
    """refine_topk used to write into a strided view as if it were dense, past its end."""
    queries = np.ones((2, 4), np.float32)
    rows = np.ones((5, 4), np.float16)
    candidates = np.array([[0, 1, 2], [2, 3, 4]], dtype=np.int64)
    wide_scores, wide_ids = np.zeros((2, 6), np.float32), np.zeros((2, 6), np.int64)
    good_scores, good_ids = np.empty((2, 3), np.float32), np.empty((2, 3), np.int64)
    for scores, ids, message in (
        (wide_scores[:, ::2], good_ids, "out_scores must be C-contiguous"),
        (good_scores, wide_ids[:, ::2], "out_ids must be C-contiguous"),
        (good_scores, good_ids.astype(np.int32), "out_ids must have dtype int64"),
        (np.empty((3, 3), np.float32), good_ids, r"out_scores must have shape \(2, 3\), got \(3, 3\)"),
    ):
        with pytest.raises(InputError, match=message):
            _native.refine_topk(queries, [rows], candidates, 3, "ip", scores, ids)
    assert not wide_scores.any() and not wide_ids.any()  # nothing was written through the strided views
    read_only = np.empty((2, 3), np.float32)
    read_only.setflags(write=False)
    with pytest.raises(InputError, match="out_scores must be writeable"):
        _native.refine_topk(queries, [rows], candidates, 3, "ip", read_only, good_ids)
    with pytest.raises(InputError, match=r"shard rows must have shape \(n, 4\), got \(5, 3\)"):
        _native.refine_topk(
            queries, [np.ones((5, 3), np.float16)], candidates, 3, "ip", good_scores, good_ids
        )
    _native.refine_topk(queries, [rows], candidates, 3, "ip", good_scores, good_ids)
    np.testing.assert_array_equal(good_ids, candidates)


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
@pytest.mark.parametrize("metric", ["ip", "cosine"])
@pytest.mark.parametrize("dim", [7, 384])
def test_refine_rescores_candidates_as_numpy_does(dtype: str, metric: str, dim: int, simd: str) -> None:
    rng = np.random.default_rng(dim)
    blocks = [rng.standard_normal((n, dim)).astype(DTYPES[dtype]) for n in (300, 1, 200)]
    rows = np.concatenate(blocks)
    queries = rng.standard_normal((5, dim)).astype(np.float32)
    # distinct candidates per query, as an index's first pass gives them; empty slots are skipped
    candidates = np.stack([rng.choice(len(rows), 60, replace=False) for _ in range(5)]).astype(np.int64)
    candidates[:, -3:] = MISSING_ID
    k = 10
    scores = np.empty((5, k), dtype=np.float32)
    ids = np.empty((5, k), dtype=np.int64)
    _native.refine_topk(queries, blocks, candidates, k, metric, scores, ids)
    every = brute_force_scores(queries, rows, metric)
    for q in range(5):
        pool = np.unique(candidates[q][candidates[q] != MISSING_ID])
        order = pool[np.lexsort((pool, -every[q, pool]))][:k]
        np.testing.assert_array_equal(ids[q], order)
        np.testing.assert_allclose(scores[q], every[q, order], rtol=1e-4, atol=1e-4)


def test_the_variants_agree_on_ids_and_forcing_one_is_checked() -> None:
    rng = np.random.default_rng(3)
    rows = rng.integers(-3, 4, size=(3000, 384)).astype(np.float16)
    queries = rng.integers(-3, 4, size=(8, 384)).astype(np.float32)
    before = _native.simd_variant()
    try:
        found = {}
        for variant in _native.simd_variants():
            _native.set_simd_variant(variant)
            found[variant] = exact_search(queries, rows, 50)
        first = next(iter(found.values()))
        for scores, ids in found.values():
            np.testing.assert_array_equal(ids, first[1])
            np.testing.assert_array_equal(scores, first[0])  # integer data: exact in every variant
        with pytest.raises(InputError, match="not a SIMD variant of this build"):
            _native.set_simd_variant("avx9")
    finally:
        _native.set_simd_variant(before)
