"""Exact top-k search and top-k merging over in-memory arrays (the native kernels, typed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from fastmarco import _native
from fastmarco.errors import InputError

Metric = Literal["ip", "cosine"]

MISSING_ID: int = _native.MISSING_ID
"""Id of an empty result slot (fewer than k rows); its score is -inf."""


def simd_variant() -> str:
    """The SIMD variant the native kernels run (baseline, avx2, avx512; neon on ARM): the widest this
    CPU runs, chosen once, or the one FASTMARCO_SIMD forces (an unknown or unrunnable one is an
    InputError saying what the CPU runs)."""
    return _native.simd_variant()


def simd_variants() -> list[str]:
    """The SIMD variants this build holds that this CPU runs, widest first."""
    return _native.simd_variants()


@dataclass(frozen=True)
class NativeInfo:
    """What the native module was built with and runs here (`fastmarco info`, bug reports)."""

    march: str  # the build's -march ("" for the compiler's default target: a portable build)
    compiled: list[str]  # the SIMD variants the module holds, widest first
    runs: list[str]  # those this CPU runs
    active: str  # the one the kernels use
    hamming_kernel: str  # the popcount kernel the binary index kinds' "auto" runs


def native_info() -> NativeInfo:
    return NativeInfo(
        march=_native.BUILD_MARCH,
        compiled=_native.simd_compiled(),
        runs=simd_variants(),
        active=simd_variant(),
        hamming_kernel=_native.hamming_auto_kernel(),
    )


def as_queries(queries: npt.ArrayLike, dim: int | None = None) -> npt.NDArray[np.float32]:
    """Queries as a C-contiguous (nq, dim) float32 array, checked to be finite."""
    array = np.asarray(queries)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise InputError(f"queries must be 1-D (dim,) or 2-D (nq, dim), got shape {array.shape}")
    if array.dtype.kind != "f":
        raise InputError(f"queries must be floating point, got dtype {array.dtype}")
    if dim is not None and array.shape[1] != dim:
        raise InputError(f"queries have dim {array.shape[1]} but the rows have dim {dim}")
    out = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(out).all():
        bad = int(np.argwhere(~np.isfinite(out))[0, 0])
        raise InputError(f"query {bad} contains NaN or infinity")
    return out


def check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise InputError(f"k must be positive (an integer >= 1), got {k!r}")


def capped_k(k: int, rows: int, where: object) -> int:
    """k checked and capped at the rows there are: results, and the buffers behind them, are sized
    from the cap (a k of 10**12 over 200 rows asks for 200, not for terabytes). An index of no rows
    is an error naming it."""
    check_k(k)
    if rows == 0:
        raise InputError(f"{where}: the index holds no rows (it was built over an empty corpus)")
    return min(int(k), rows)


def exact_search(
    queries: npt.ArrayLike,
    rows: npt.NDArray[np.floating],
    k: int,
    metric: Metric = "ip",
    *,
    threads: int = 0,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Exact top-k of queries against a (n, dim) float16/float32 array.

    Returns (scores, row ids), each (nq, k), best first; ties go to the lower row id; slots
    beyond n hold (-inf, MISSING_ID). `threads=0` uses every hardware thread.
    """
    if rows.ndim != 2:
        raise InputError(f"rows must be 2-D (n, dim), got shape {rows.shape}")
    q = as_queries(queries, rows.shape[1])
    check_k(k)
    scores = np.empty((q.shape[0], k), dtype=np.float32)
    ids = np.empty((q.shape[0], k), dtype=np.int64)
    _native.exact_search(q, rows, k, metric, scores, ids, threads)
    return scores, ids


def merge_topk(
    scores: npt.NDArray[np.float32],
    ids: npt.NDArray[np.int64],
    id_offsets: npt.ArrayLike | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Merge (nshard, nq, k) best-first lists into (nq, k), like faiss `merge_knn_results`.

    Local ids of shard s are shifted by `id_offsets[s]` (MISSING_ID stays MISSING_ID). Ties
    between equal scores go to the lower global id, so the result does not depend on shard order.
    """
    if scores.ndim != 3:
        raise InputError(f"scores must be 3-D (nshard, nq, k), got shape {scores.shape}")
    nshard, nq, k = scores.shape
    offsets = (
        np.zeros(nshard, dtype=np.int64) if id_offsets is None else np.asarray(id_offsets, dtype=np.int64)
    )
    out_scores = np.empty((nq, k), dtype=np.float32)
    out_ids = np.empty((nq, k), dtype=np.int64)
    _native.merge_topk(
        np.ascontiguousarray(scores),
        np.ascontiguousarray(ids),
        np.ascontiguousarray(offsets),
        out_scores,
        out_ids,
    )
    return out_scores, out_ids
