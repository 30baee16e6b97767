"""The binary and int8 index kinds: the native Hamming kernel against NumPy brute force (every kernel
this CPU runs), sign binarisation against sentence-transformers, the asymmetric step against a
direct computation, and each kind end to end (build, open, search, exact scores) on seeded data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from fastmarco import _native
from fastmarco.errors import IndexMismatchError, InputError
from fastmarco.search.backends import VectorIndex
from fastmarco.search.binary_kinds import CODES_FILE, asymmetric_top, binarize
from fastmarco.search.exact import search_shards
from fastmarco.search.index import build_index, plan_index
from fastmarco.store.shards import ShardSet, write_shards

KERNELS = _native.hamming_kernels()
NEW_KINDS = ("binary", "binary-ivf", "binary-hnsw", "int8", "int8-ivf", "int8-hnsw", "ivfpq-fs")


def brute_force_hamming(
    queries: npt.NDArray[np.uint8], codes: npt.NDArray[np.uint8], k: int
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
    """Nearest first, ties to the lower row, padded with (-1, -1)."""
    distances = np.unpackbits(queries[:, None, :] ^ codes[None, :, :], axis=-1).sum(axis=-1)
    out_d = np.full((len(queries), k), -1, dtype=np.int32)
    out_r = np.full((len(queries), k), -1, dtype=np.int64)
    for q, row in enumerate(distances):
        order = np.lexsort((np.arange(len(row)), row))[:k]
        out_d[q, : len(order)], out_r[q, : len(order)] = row[order], order
    return out_d, out_r


def test_the_machine_has_the_portable_kernel_and_auto_picks_the_fastest() -> None:
    assert KERNELS[-1] == "generic" and len(set(KERNELS)) == len(KERNELS)


def test_auto_runs_the_fastest_kernel_within_the_forced_simd_variant(simd: str) -> None:
    allowed = {"avx512": KERNELS, "avx2": [k for k in KERNELS if k != "avx512-vpopcntdq"]}
    assert _native.hamming_auto_kernel() == allowed.get(simd, ["generic"])[0]
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 256, size=(3_000, 48), dtype=np.uint8)
    distances = np.empty((3, 10), dtype=np.int32)
    rows = np.empty((3, 10), dtype=np.int64)
    _native.hamming_topk(codes[:3], codes, 10, distances, rows, 0, "auto")
    expected_d, expected_r = brute_force_hamming(codes[:3], codes, 10)
    np.testing.assert_array_equal(distances, expected_d)
    np.testing.assert_array_equal(rows, expected_r)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("nbytes", [1, 7, 8, 13, 48, 64, 96, 100])
@pytest.mark.parametrize("threads", [1, 2])
def test_hamming_topk_equals_numpy_brute_force(kernel: str, nbytes: int, threads: int) -> None:
    rng = np.random.default_rng(nbytes * 10 + threads)
    codes = rng.integers(0, 256, size=(5_000, nbytes), dtype=np.uint8)
    codes[100:110] = codes[7]  # exact duplicates: ties go to the lower row
    queries = np.concatenate([codes[[7, 4_999]], rng.integers(0, 256, size=(5, nbytes), dtype=np.uint8)])
    k = 25
    distances = np.empty((len(queries), k), dtype=np.int32)
    rows = np.empty((len(queries), k), dtype=np.int64)
    _native.hamming_topk(queries, codes, k, distances, rows, threads, kernel)
    expected_d, expected_r = brute_force_hamming(queries, codes, k)
    np.testing.assert_array_equal(distances, expected_d)
    np.testing.assert_array_equal(rows, expected_r)
    assert list(rows[0, :11]) == [7, *range(100, 110)]


@pytest.mark.parametrize("kernel", KERNELS)
def test_fewer_rows_than_k_are_padded(kernel: str) -> None:
    codes = np.array([[0b1111_0000], [0b0000_0001], [0b1111_0000]], dtype=np.uint8)
    distances = np.empty((1, 5), dtype=np.int32)
    rows = np.empty((1, 5), dtype=np.int64)
    _native.hamming_topk(np.array([[0b1111_0001]], dtype=np.uint8), codes, 5, distances, rows, 0, kernel)
    assert distances.tolist() == [[1, 1, 4, -1, -1]] and rows.tolist() == [[0, 2, 1, -1, -1]]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"queries": np.zeros((2, 8), dtype=np.int8)}, "queries must have dtype uint8"),
        ({"codes": np.zeros((10, 9), dtype=np.uint8)}, r"codes must have shape \(n, 8\)"),
        ({"codes": np.zeros((10, 16), dtype=np.uint8)[:, ::2]}, "codes must be C-contiguous"),
        ({"out_ids": np.zeros((2, 3), dtype=np.int64)}, r"out_ids must have shape \(2, 4\)"),
        ({"kernel": "sse9"}, "kernel must be one of auto, generic"),
    ],
)
def test_bad_arrays_are_refused_before_the_kernel_runs(change: dict, message: str) -> None:
    arguments = {
        "queries": np.zeros((2, 8), dtype=np.uint8),
        "codes": np.zeros((10, 8), dtype=np.uint8),
        "k": 4,
        "out_distances": np.zeros((2, 4), dtype=np.int32),
        "out_ids": np.zeros((2, 4), dtype=np.int64),
        "threads": 0,
        "kernel": "auto",
    }
    with pytest.raises(InputError, match=message):
        _native.hamming_topk(**{**arguments, **change})


def test_binarize_is_sentence_transformers_ubinary() -> None:
    quantization = pytest.importorskip("sentence_transformers.quantization", reason="needs the export extra")
    vectors = np.random.default_rng(0).standard_normal((50, 100)).astype(np.float32)
    vectors[0, :10] = 0.0  # zero is not positive, in both
    ours = binarize(vectors)
    theirs = quantization.quantize_embeddings(vectors, precision="ubinary")
    np.testing.assert_array_equal(ours, theirs)


def test_the_asymmetric_step_ranks_by_the_plus_minus_one_inner_product() -> None:
    rng = np.random.default_rng(3)
    dim = 20
    codes = binarize(rng.standard_normal((300, dim)))
    queries = rng.standard_normal((4, dim)).astype(np.float32)
    candidates = np.stack([rng.choice(300, size=30, replace=False) for _ in range(4)])
    candidates[1, -5:] = -1
    kept = asymmetric_top(queries, candidates, codes, 10)
    signs = np.unpackbits(codes, axis=1, count=dim).astype(np.float32) * 2 - 1
    for q in range(4):
        pool = candidates[q][candidates[q] >= 0]
        scores = signs[pool] @ queries[q]
        np.testing.assert_array_equal(kept[q], pool[np.argsort(-scores, kind="stable")[:10]])


@pytest.fixture(scope="module")
def clustered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, npt.NDArray[np.float32]]:
    """4,000 unit vectors x 64 around 40 centres (fp16 shards of 1,500 rows), and 30 queries."""
    rng = np.random.default_rng(11)
    centres = rng.standard_normal((40, 64))
    vectors = centres[rng.integers(0, 40, size=4_000)] + 0.7 * rng.standard_normal((4_000, 64))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = centres[rng.integers(0, 40, size=30)] + 0.7 * rng.standard_normal((30, 64))
    root = tmp_path_factory.mktemp("clustered")
    ids = [f"p{i}" for i in range(4_000)]
    write_shards(root / "s", vectors.astype(np.float16), ids, rows_per_shard=1_500, id_type="str")
    return root / "s", queries.astype(np.float32)


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_each_new_kind_builds_plans_and_finds_the_exact_neighbours(
    clustered: tuple[Path, npt.NDArray[np.float32]], tmp_path: Path, kind: str
) -> None:
    shards, queries = clustered
    plan = plan_index(shards, kind)
    manifest = build_index(shards, tmp_path / kind, kind=kind, refine=20)
    assert manifest.kind == kind and manifest.factory == plan.factory
    index = VectorIndex.open(tmp_path / kind)
    found = index.search(queries, 10)
    _, exact_rows = search_shards(ShardSet.open(shards), queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found.rows, exact_rows, strict=True)])
    assert recall >= 0.95, f"{kind}: recall@10 {recall:.3f}"
    # the scores are exact whatever the first pass: rescored from the shards
    vectors = np.concatenate(list(ShardSet.open(shards).shard_vectors())).astype(np.float32)
    rescored = np.einsum("qd,qkd->qk", queries, vectors[found.rows])
    np.testing.assert_allclose(found.scores, rescored, rtol=1e-5, atol=1e-5)
    assert found.ids[0][0] == f"p{found.rows[0][0]}"
    assert manifest.build["index_bytes"] > 0


def test_a_binary_index_keeps_one_code_bit_per_dimension(
    clustered: tuple[Path, npt.NDArray[np.float32]], tmp_path: Path
) -> None:
    shards, _ = clustered
    build_index(shards, tmp_path / "b", kind="binary")
    codes = np.load(tmp_path / "b" / CODES_FILE)
    vectors = np.concatenate(list(ShardSet.open(shards).shard_vectors()))
    np.testing.assert_array_equal(codes, binarize(vectors))
    assert codes.shape == (4_000, 8)
    built = json.loads((tmp_path / "b" / "index.json").read_text())["build"]
    assert built["kernel"] == KERNELS[0]


def test_a_damaged_code_file_is_named(
    clustered: tuple[Path, npt.NDArray[np.float32]], tmp_path: Path
) -> None:
    shards, _ = clustered
    build_index(shards, tmp_path / "b", kind="binary")
    np.save(tmp_path / "b" / CODES_FILE, np.zeros((10, 8), dtype=np.uint8))
    with pytest.raises(IndexMismatchError, match=r"codes\.npy: holds \(10, 8\) uint8 codes"):
        VectorIndex.open(tmp_path / "b")
    (tmp_path / "b" / CODES_FILE).write_bytes(b"not numpy")
    with pytest.raises(Exception, match=r"codes\.npy: not a readable code file"):
        VectorIndex.open(tmp_path / "b")


@pytest.mark.parametrize(("kind", "refine"), [("binary", 10), ("binary-ivf", 10), ("int8", 4), ("pq", 50)])
def test_each_kind_refines_as_deep_as_its_first_pass_needs_unless_told(
    clustered: tuple[Path, npt.NDArray[np.float32]], tmp_path: Path, kind: str, refine: int
) -> None:
    shards, _ = clustered
    assert build_index(shards, tmp_path / "default", kind=kind).refine == refine
    assert build_index(shards, tmp_path / "told", kind=kind, refine=3).refine == 3
