"""Paired significance tests over per-query metric values, and multiple-comparison corrections.

The definitions are ranx's (and Smucker et al., CIKM '07), so figures can be checked against it:
- the paired Student t-test is two-sided (scipy's `ttest_rel`);
- Fisher's randomization test swaps each query's pair of values with probability 1/2 and reports the
  share of `permutations` whose absolute mean difference is at least the observed one (no +1).
Randomization is the hot loop (6,980 dev queries x 10,000 permutations x every pair of systems): it
runs in numba, in parallel over permutations, each permutation drawing from its own generator seeded
from (seed, permutation number), so the p-value does not depend on the thread count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from fastmarco.errors import InputError

Test = Literal["paired-t", "fisher"]
Correction = Literal["holm", "bonferroni", "none"]
TESTS: tuple[Test, ...] = ("paired-t", "fisher")
CORRECTIONS: tuple[Correction, ...] = ("holm", "bonferroni", "none")
_EXTRA = "pip install 'fastmarco[experiment]'"

FloatArray = npt.NDArray[np.float64]


def paired_t(control: FloatArray, treatment: FloatArray) -> float:
    """Two-sided paired t-test p-value; identical vectors (no variance in the differences) give 1.0."""
    _check_pair(control, treatment)
    try:
        from scipy.stats import ttest_rel
    except ImportError:
        raise InputError(f"the paired t-test needs scipy: {_EXTRA}") from None
    difference = treatment - control
    if np.ptp(difference) == 0:  # no variance (scipy would divide by zero): equal, or always apart
        return 0.0 if difference.any() else 1.0
    return float(ttest_rel(control, treatment, alternative="two-sided").pvalue)


def fisher_randomization(
    control: FloatArray, treatment: FloatArray, permutations: int = 10_000, seed: int = 42
) -> float:
    """Fisher's randomization test p-value (approximated by `permutations` random sign flips)."""
    _check_pair(control, treatment)
    if permutations < 1:
        raise InputError(f"permutations must be at least 1, got {permutations}")
    difference = np.ascontiguousarray(treatment - control, dtype=np.float64)
    hits = _randomization_kernel()(difference, permutations, seed)
    return float(hits) / permutations


def _check_pair(control: FloatArray, treatment: FloatArray) -> None:
    if control.shape != treatment.shape or control.ndim != 1 or not len(control):
        raise InputError(
            f"paired tests need two equal-length, non-empty per-query vectors, got {control.shape} "
            f"and {treatment.shape}"
        )


_KERNEL: Callable[[FloatArray, int, int], int] | None = None


def _randomization_kernel() -> Callable[[FloatArray, int, int], int]:
    """Compile (once, cached on disk by numba) the parallel sign-flip loop."""
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL
    try:
        import numba
    except ImportError:
        raise InputError(f"Fisher's randomization test needs numba: {_EXTRA}") from None

    @numba.njit(cache=True, inline="always")
    def splitmix64(state: Any) -> Any:  # pragma: no cover - compiled
        state = (state + numba.uint64(0x9E3779B97F4A7C15)) & numba.uint64(0xFFFFFFFFFFFFFFFF)
        z = state
        z = (z ^ (z >> numba.uint64(30))) * numba.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> numba.uint64(27))) * numba.uint64(0x94D049BB133111EB)
        return state, z ^ (z >> numba.uint64(31))

    @numba.njit(cache=True, parallel=True)
    def count_extreme(difference: Any, permutations: Any, seed: Any) -> Any:  # pragma: no cover
        n = difference.shape[0]
        observed = abs(difference.sum()) / n
        # the identity permutation's sum may round differently from the observed one: compare with a
        # margin of a few ulps of the total, not exactly
        margin = 1e-12 * max(np.abs(difference).sum() / n, 1e-300)
        hits = np.zeros(permutations, dtype=np.int64)
        for p in numba.prange(permutations):
            state = numba.uint64(seed) * numba.uint64(0x100000001B3) + numba.uint64(p)
            total = 0.0
            bits = numba.uint64(0)
            for i in range(n):
                if i % 64 == 0:
                    state, bits = splitmix64(state)
                if bits & numba.uint64(1):
                    total -= difference[i]
                else:
                    total += difference[i]
                bits >>= numba.uint64(1)
            if abs(total) / n >= observed - margin:
                hits[p] = 1
        return hits.sum()

    _KERNEL = count_extreme
    return count_extreme


def run_test(test: Test, control: FloatArray, treatment: FloatArray, permutations: int, seed: int) -> float:
    if test == "paired-t":
        return paired_t(control, treatment)
    if test == "fisher":
        return fisher_randomization(control, treatment, permutations, seed)
    raise InputError(f"unknown test {test!r}; use {' or '.join(TESTS)}")


def corrected(p_values: Sequence[float], correction: Correction) -> list[float]:
    """Family-wise corrected p-values, in the order given (Holm's step-down, or Bonferroni)."""
    count = len(p_values)
    if correction == "none":
        return list(p_values)
    if correction == "bonferroni":
        return [min(1.0, p * count) for p in p_values]
    if correction == "holm":
        order = sorted(range(count), key=lambda i: p_values[i])
        adjusted = [0.0] * count
        running = 0.0
        for position, i in enumerate(order):
            running = max(running, min(1.0, (count - position) * p_values[i]))
            adjusted[i] = running
        return adjusted
    raise InputError(f"unknown correction {correction!r}; use {', '.join(CORRECTIONS)}")
