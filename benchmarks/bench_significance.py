"""What significance testing and fusion cost at MS MARCO dev scale, against ranx on the same input.

    python benchmarks/bench_significance.py [--systems 4] [--permutations 10000] [--depth 1000]

Per-query values for 6,980 queries (the dev set's size; MRR@10-like: mostly 0, else 1/rank) for
`--systems` systems, seeded; times every pair's Fisher randomization test (`--permutations`, numba,
parallel) and paired t-test with fastmarco, then one pair with ranx's Fisher test (the same numbers of
queries and permutations). Fusion: RRF and min-max weighted sum of `--systems` seeded runs of 6,980
queries x `--depth` passages, fastmarco against `ranx.fuse`. Compile time (first call) is reported
apart from the steady-state time. Saves results/significance_<cpu family>.json.
"""

from __future__ import annotations

import argparse
import time
from itertools import combinations
from typing import Any

import numpy as np
from _common import cpu_family, environment, save

from fastmarco.eval.fusion import NamedRun, fuse
from fastmarco.eval.significance import fisher_randomization, paired_t
from fastmarco.store.formats import RunColumns

QUERIES = 6_980


def per_query_values(systems: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for s in range(systems):
        found = rng.random(QUERIES) < 0.55 + 0.03 * s
        rank = rng.integers(1, 11, QUERIES)
        out.append(np.where(found, 1.0 / rank, 0.0))
    return out


def seeded_runs(systems: int, depth: int, seed: int) -> list[RunColumns]:
    rng = np.random.default_rng(seed)
    qids = np.repeat(np.array([str(1_000_000 + q) for q in range(QUERIES)], dtype=object), depth)
    runs = []
    for _ in range(systems):
        # distinct within a query, partly shared between systems
        start = np.arange(QUERIES)[:, None] * 10_000 + rng.integers(0, 2 * depth, QUERIES)[:, None]
        pids = (start + np.arange(depth)).astype(str).astype(object).ravel()
        scores = -np.sort(-rng.normal(size=(QUERIES, depth)), axis=1).ravel()  # best first, as files are
        runs.append(RunColumns(qids, pids, np.zeros(len(pids), dtype=np.int64), scores))
    return runs


def timed(call: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    value = call()
    return time.perf_counter() - started, value


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--systems", type=int, default=4)
    parser.add_argument("--permutations", type=int, default=10_000)
    parser.add_argument("--depth", type=int, default=1000)
    parser.add_argument("--no-ranx", action="store_true", help="fastmarco only")
    args = parser.parse_args()

    values = per_query_values(args.systems, 0)
    pairs = list(combinations(range(args.systems), 2))
    compile_s, _ = timed(lambda: fisher_randomization(values[0][:10], values[1][:10], 10))
    fisher_s, fisher_p = timed(
        lambda: [fisher_randomization(values[a], values[b], args.permutations) for a, b in pairs]
    )
    t_s, t_p = timed(lambda: [paired_t(values[a], values[b]) for a, b in pairs])
    result: dict[str, Any] = {
        "queries": QUERIES,
        "systems": args.systems,
        "pairs": len(pairs),
        "permutations": args.permutations,
        "fastmarco": {
            "fisher_compile_s": round(compile_s, 3),
            "fisher_all_pairs_s": round(fisher_s, 3),
            "paired_t_all_pairs_s": round(t_s, 4),
            "fisher_p": fisher_p,
            "paired_t_p": t_p,
        },
    }
    print(
        f"fastmarco: Fisher {len(pairs)} pairs x {args.permutations:,} permutations in {fisher_s:.2f} s "
        f"(compile {compile_s:.2f} s); t-test in {t_s * 1000:.1f} ms"
    )

    runs = [
        NamedRun(f"run{i}", columns) for i, columns in enumerate(seeded_runs(args.systems, args.depth, 1))
    ]
    rrf_s, _ = timed(lambda: fuse(runs, method="rrf", depth=args.depth))
    wsum_s, _ = timed(lambda: fuse(runs, method="wsum", norm="min-max", depth=args.depth))
    result["fastmarco"] |= {"fuse_rrf_s": round(rrf_s, 2), "fuse_wsum_minmax_s": round(wsum_s, 2)}
    print(
        f"fastmarco: fuse {args.systems} runs x {QUERIES:,} queries x {args.depth} in {rrf_s:.2f} s (RRF), "
        f"{wsum_s:.2f} s (min-max wsum)"
    )

    if not args.no_ranx:
        import ranx
        from ranx.statistical_tests import fisher_randomization_test

        first_s, _ = timed(lambda: fisher_randomization_test(values[0][:10], values[1][:10], 10, 0.05, 42))
        ranx_s, ranx_p = timed(
            lambda: fisher_randomization_test(values[0], values[1], args.permutations, 0.05, 42)
        )
        ranx_runs = []
        for named in runs:
            run: dict[str, dict[str, float]] = {}
            for q, p, s in zip(named.columns.qids, named.columns.pids, named.columns.scores, strict=True):
                run.setdefault(q, {})[p] = float(s)
            ranx_runs.append(ranx.Run(run))
        ranx_rrf_s, _ = timed(lambda: ranx.fuse(ranx_runs, norm=None, method="rrf"))
        result["ranx"] = {
            "version": ranx.__version__ if hasattr(ranx, "__version__") else None,
            "fisher_first_call_s": round(first_s, 3),
            "fisher_one_pair_s": round(ranx_s, 3),
            "fisher_all_pairs_projected_s": round(ranx_s * len(pairs), 2),
            "fisher_p_first_pair": float(ranx_p[0]),
            "fuse_rrf_s": round(ranx_rrf_s, 2),
        }
        print(
            f"ranx: Fisher one pair in {ranx_s:.2f} s ({ranx_s * len(pairs):.1f} s for all pairs); "
            f"fuse RRF in {ranx_rrf_s:.2f} s"
        )
    result["environment"] = environment(["numpy", "numba", "scipy", "ranx"])
    print(save(f"significance_{cpu_family()}", result))


if __name__ == "__main__":
    main()
