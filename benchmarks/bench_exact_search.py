"""Exact top-k throughput: fastmarco (fp16 shards) vs faiss IndexFlatIP (fp32) vs NumPy, same run.

    python benchmarks/bench_exact_search.py [--rows 1000000] [--dim 768] [--k 10]

Prints a table and saves benchmarks/results/exact_search_<rows>x<dim>.json. All three search the
same embeddings (unit-normalised Gaussian rows); fastmarco reads them as fp16 from memory-mapped
shards (half the bytes), faiss and NumPy hold fp32 copies. Each figure is the best of --repeats.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _common import environment, save

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
            # small batches are timed as a sequence of calls, as a serving loop makes them
            calls = rng.standard_normal((max(1, 16 // batch), batch, args.dim), dtype=np.float32)
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

    body = {
        "benchmark": "exact top-k inner product",
        "rows": args.rows,
        "dim": args.dim,
        "k": args.k,
        "shards": len(shard_set.files),
        "bytes_read_fastmarco_fp16": args.rows * args.dim * 2,
        "bytes_read_faiss_fp32": args.rows * args.dim * 4,
        "shard_write_seconds": write_seconds,
        "simd_fp16": _native.simd_fp16_enabled(),
        "threads": "all hardware threads (fastmarco threads=0, faiss omp default)",
        "results": results,
        "environment": environment(["fastmarco", "faiss-cpu", "numpy"]),
    }
    print(f"saved {save(f'exact_search_{args.rows}x{args.dim}', body)}")


if __name__ == "__main__":
    main()
