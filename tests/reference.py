"""NumPy brute-force references the native code is tested against."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def brute_force_scores(queries: npt.NDArray, rows: npt.NDArray, metric: str) -> npt.NDArray[np.float64]:
    q = queries.astype(np.float64)
    x = rows.astype(np.float64)
    scores = q @ x.T
    if metric == "cosine":
        qn = np.linalg.norm(q, axis=1, keepdims=True)
        xn = np.linalg.norm(x, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            scores = np.where((qn > 0) & (xn > 0), scores / (qn * xn), 0.0)
    return scores


def row_cosines(a: npt.NDArray, b: npt.NDArray) -> npt.NDArray[np.float64]:
    """Cosine of each row of `a` with the same row of `b`, in float64."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(axis=1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))


def brute_force_topk(scores: npt.NDArray[np.float64], k: int) -> tuple[npt.NDArray, npt.NDArray]:
    """Best-first top-k by (higher score, lower id), padded with (-inf, -1)."""
    nq, n = scores.shape
    out_scores = np.full((nq, k), -np.inf)
    out_ids = np.full((nq, k), -1, dtype=np.int64)
    ids = np.arange(n)
    for i in range(nq):
        order = np.lexsort((ids, -scores[i]))[:k]
        out_scores[i, : len(order)] = scores[i, order]
        out_ids[i, : len(order)] = order
    return out_scores, out_ids


def assert_topk_matches(
    scores: npt.NDArray, ids: npt.NDArray, all_scores: npt.NDArray[np.float64], k: int, atol: float
) -> None:
    """Ids identical to the reference except among scores tied within atol; scores within atol."""
    ref_scores, ref_ids = brute_force_topk(all_scores, k)
    valid = ref_ids >= 0
    np.testing.assert_array_equal(ids >= 0, valid)
    np.testing.assert_allclose(scores[valid], ref_scores[valid], atol=atol, rtol=0)
    rows = np.nonzero(valid)
    # every returned id carries its own reference score
    np.testing.assert_allclose(scores[valid], all_scores[rows[0], ids[valid]], atol=atol, rtol=0)
    # where the reference ranks are separated by more than the tolerance, the ids are identical
    padded = np.pad(ref_scores, ((0, 0), (1, 1)), constant_values=np.nan)
    gap = np.fmin(np.abs(padded[:, 1:-1] - padded[:, :-2]), np.abs(padded[:, 1:-1] - padded[:, 2:]))
    clear = valid & ~(gap <= 2 * atol)
    np.testing.assert_array_equal(ids[clear], ref_ids[clear])
