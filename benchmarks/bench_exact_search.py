"""Exact top-k throughput: fastmarco (fp16 shards) vs faiss IndexFlatIP (fp32) vs NumPy, same run.

    python benchmarks/bench_exact_search.py [--rows 1000000] [--dim 768] [--k 10] [--builds]

Prints a table and saves benchmarks/results/exact_search_<rows>x<dim>_<cpu family>.json. All three search the
same embeddings (unit-normalised Gaussian rows); fastmarco reads them as fp16 from memory-mapped
shards (half the bytes), faiss and NumPy hold fp32 copies. Each figure is the best of --repeats.

--builds also builds two wheels of this checkout, the portable default and `-march=native`, and
times fastmarco's search from each (in its own process, over the same shards, rounds interleaved):
runtime dispatch must keep the portable build within 5% of the native one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import cpu_family, environment, save

from fastmarco import ShardSet, ShardWriter, _native
from fastmarco.search.exact import search_shards


def seconds_per_call(search: Callable[[np.ndarray], object], calls: np.ndarray, repeats: int) -> float:
    """Best-of-`repeats` wall time of running `search` on each query batch in `calls`, per call."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for queries in calls:
            search(queries)
        times.append(time.perf_counter() - start)
    return min(times) / len(calls)


def numpy_topk(queries: np.ndarray, rows: np.ndarray, k: int, batch: int = 256) -> np.ndarray:
    """What a NumPy user writes: matmul, argpartition, then sort the k survivors."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), batch):
        scores = queries[start : start + batch] @ rows.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out[start : start + batch] = np.take_along_axis(top, order, axis=1)
    return out


ROOT = Path(__file__).resolve().parents[1]
BUILDS = {"portable": "", "native": "native"}  # build name -> FASTMARCO_MARCH


def build_package(march: str, work: Path) -> Path:
    """A wheel of this checkout built with -march=`march` (empty: the portable default), unpacked:
    the folder to put first on PYTHONPATH."""
    wheels, unpacked = work / f"wheel-{march or 'portable'}", work / f"pkg-{march or 'portable'}"
    build_dir = work / f"build-{march or 'portable'}"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(wheels),
         "-C", f"cmake.define.FASTMARCO_MARCH={march}", "-C", f"build-dir={build_dir}"],
        check=True,
    )  # fmt: skip
    with zipfile.ZipFile(next(wheels.glob("fastmarco-*.whl"))) as wheel:
        wheel.extractall(unpacked)
    return unpacked


def timed_calls(rng: np.random.Generator, batch: int, dim: int) -> np.ndarray:
    """The query batches one figure times: small batches as a sequence of calls (16 queries in all),
    as a serving loop makes them."""
    return rng.standard_normal((max(1, 16 // batch), batch, dim), dtype=np.float32)


def fastmarco_qps(shard_dir: str, k: int, batches: str, repeats: int) -> dict[str, Any]:
    """fastmarco's queries/s per batch with the build this process imported (a compare_builds child)."""
    shards = ShardSet.open(shard_dir)
    rng = np.random.default_rng(1)
    qps = {}
    for batch in (int(b) for b in batches.split(",")):
        calls = timed_calls(rng, batch, shards.dim)
        qps[batch] = batch / seconds_per_call(lambda q: search_shards(shards, q, k), calls, repeats)
    return {"qps": qps, "march": _native.BUILD_MARCH, "variant": _native.simd_variant()}


# A compare_builds child: this script's own measurement, with fastmarco imported from the unpacked
# wheel on PYTHONPATH (argv[1]) rather than from the checkout's editable install.
CHILD = f"""
import json, sys
sys.meta_path = [f for f in sys.meta_path if "editable" not in type(f).__module__]
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
import bench_exact_search as bench
assert bench._native.__file__.startswith(sys.argv[1]), bench._native.__file__
print(json.dumps(bench.fastmarco_qps(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))))
"""


def compare_builds(shard_dir: Path, k: int, batches: str, repeats: int, rounds: int) -> dict[str, Any]:
    """fastmarco's queries/s per batch from each build's own process, the best of `rounds`
    interleaved rounds (so a slow spell of the machine does not fall on one build only)."""
    with tempfile.TemporaryDirectory(prefix="fastmarco-builds-") as scratch:
        packages = {name: build_package(march, Path(scratch)) for name, march in BUILDS.items()}
        found: dict[str, dict[str, Any]] = {}
        for round_number in range(rounds):
            order = list(packages.items())
            for name, package in order if round_number % 2 == 0 else order[::-1]:  # neither always first
                command = [sys.executable, "-c", CHILD, str(package), str(shard_dir), str(k), batches]
                done = subprocess.run(
                    [*command, str(repeats)], capture_output=True, text=True, check=True,
                    env={**os.environ, "PYTHONPATH": str(package)},
                )  # fmt: skip
                measured = json.loads(done.stdout)
                print(f"round {round_number + 1} {name:>8}: {measured}", flush=True)
                best = found.setdefault(name, {**measured, "qps": {}})
                for batch, qps in measured["qps"].items():
                    best["qps"][batch] = max(best["qps"].get(batch, 0.0), qps)
    ratio = {b: found["portable"]["qps"][b] / found["native"]["qps"][b] for b in found["native"]["qps"]}
    return {"builds": found, "portable_vs_native": ratio, "rounds": rounds}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batches", default="1,16,256,1024", help="query batch sizes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows-per-shard", type=int, default=250_000)
    parser.add_argument("--builds", action="store_true", help="also compare portable and native builds")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds for --builds")
    args = parser.parse_args()
    import faiss  # the benchmark extra: pip install .[bench]

    rng = np.random.default_rng(0)
    print(f"generating {args.rows:,} x {args.dim} embeddings ...", flush=True)
    rows32 = np.empty((args.rows, args.dim), dtype=np.float32)
    for start in range(0, args.rows, 100_000):
        block = rng.standard_normal((min(100_000, args.rows - start), args.dim), dtype=np.float32)
        rows32[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)

    with tempfile.TemporaryDirectory(prefix="fastmarco-bench-") as scratch:
        start = time.perf_counter()
        with ShardWriter(Path(scratch) / "s", dim=args.dim, rows_per_shard=args.rows_per_shard) as writer:
            for first in range(0, args.rows, 100_000):
                writer.add(rows32[first : first + 100_000], np.arange(first, min(args.rows, first + 100_000)))
        write_seconds = time.perf_counter() - start
        shard_set = ShardSet.open(Path(scratch) / "s")
        index = faiss.IndexFlatIP(args.dim)
        index.add(rows32)

        results = []
        print(
            f"{'batch':>6} {'fastmarco q/s':>14} {'faiss q/s':>10} {'numpy q/s':>10}"
            f" {'vs faiss':>9} {'top-k agree':>12}"
        )
        for batch in (int(b) for b in args.batches.split(",")):
            queries = rng.standard_normal((batch, args.dim), dtype=np.float32)
            calls = timed_calls(rng, batch, args.dim)
            ours_s = seconds_per_call(lambda q: search_shards(shard_set, q, args.k), calls, args.repeats)
            faiss_s = seconds_per_call(lambda q: index.search(q, args.k), calls, args.repeats)
            numpy_s = seconds_per_call(
                lambda q: numpy_topk(q, rows32, args.k), calls, max(1, args.repeats - 1)
            )
            _, our_ids = search_shards(shard_set, queries, args.k)
            _, faiss_ids = index.search(queries, args.k)
            # fp16 storage vs fp32: neighbours may swap where scores differ by < fp16 rounding
            agree = float(
                np.mean([len(set(a) & set(b)) / args.k for a, b in zip(our_ids, faiss_ids, strict=True)])
            )
            row = {
                "batch": batch,
                "fastmarco_qps": batch / ours_s,
                "faiss_flat_ip_qps": batch / faiss_s,
                "numpy_qps": batch / numpy_s,
                "speedup_vs_faiss": faiss_s / ours_s,
                "topk_overlap_with_faiss": agree,
            }
            results.append(row)
            print(
                f"{batch:>6} {row['fastmarco_qps']:>14.1f} {row['faiss_flat_ip_qps']:>10.1f} "
                f"{row['numpy_qps']:>10.1f} {row['speedup_vs_faiss']:>8.2f}x {agree:>12.4f}",
                flush=True,
            )
        builds = (
            compare_builds(Path(scratch) / "s", args.k, args.batches, args.repeats, args.rounds)
            if args.builds
            else None
        )

    body = {
        "benchmark": "exact top-k inner product",
        "rows": args.rows,
        "dim": args.dim,
        "k": args.k,
        "shards": len(shard_set.files),
        "bytes_read_fastmarco_fp16": args.rows * args.dim * 2,
        "bytes_read_faiss_fp32": args.rows * args.dim * 4,
        "shard_write_seconds": write_seconds,
        "build_march": _native.BUILD_MARCH,
        "simd_variant": _native.simd_variant(),
        "threads": "all hardware threads (fastmarco threads=0, faiss omp default)",
        "results": results,
        "environment": environment(["fastmarco", "faiss-cpu", "numpy"]),
    }
    if builds is not None:
        body["portable_vs_native"] = builds
        for batch, ratio in builds["portable_vs_native"].items():
            print(f"batch {batch}: portable build at {ratio:.3f}x the native build's queries/s")
    print(f"saved {save(f'exact_search_{args.rows}x{args.dim}_{cpu_family()}', body)}")


if __name__ == "__main__":
    main()
