"""What verifying shard checksums costs when an index is built or an Engine opens.

    python benchmarks/bench_verify.py [--rows 1000000] [--dim 768] [--rows-per-shard 250000]

Writes seeded fp16 shards, then times `ShardSet.open` with verify="size" (headers and sizes only) and
verify="checksum" (XXH3-64 of every vector and id file) on 1 and on all threads, with the files in
the page cache (warm) and, where this process may drop the cache (root on Linux), read from disk
(cold). Projects the 8,841,823 x 768 figure from the measured GB/s. Saves results/verify_<rows>x<dim>.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import environment, save

from fastmarco import ShardSet, ShardWriter

MSMARCO_ROWS = 8_841_823


def drop_page_cache() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def timed_open(directory: Path, verify: str, threads: int) -> float:
    started = time.perf_counter()
    ShardSet.open(directory, verify=verify, threads=threads)  # type: ignore[arg-type]
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--rows-per-shard", type=int, default=250_000)
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "fastmarco-bench-verify"
    )
    args = parser.parse_args()
    directory = args.workdir / f"shards-{args.rows}x{args.dim}"
    if not (directory / "manifest.json").is_file():
        rng = np.random.default_rng(0)
        with ShardWriter(directory, dim=args.dim, rows_per_shard=args.rows_per_shard) as writer:
            for start in range(0, args.rows, 50_000):
                block = rng.standard_normal((min(50_000, args.rows - start), args.dim), dtype=np.float32)
                writer.add(block, np.arange(start, start + len(block)))
    gigabytes = sum(p.stat().st_size for p in directory.iterdir()) / 1e9
    cores = os.cpu_count() or 1
    results: dict[str, Any] = {"rows": args.rows, "dim": args.dim, "gigabytes": gigabytes, "cores": cores}
    timed_open(directory, "checksum", cores)  # warm the page cache
    for verify, threads in (("size", 1), ("checksum", 1), ("checksum", cores)):
        best = min(timed_open(directory, verify, threads) for _ in range(3))
        results[f"warm_{verify}_{threads}_threads_seconds"] = best
        print(
            f"warm  verify={verify:<8} threads={threads}: {best:7.3f} s  ({gigabytes / best:6.2f} GB/s)",
            flush=True,
        )
    if drop_page_cache():
        for threads in (1, cores):
            drop_page_cache()
            seconds = timed_open(directory, "checksum", threads)
            results[f"cold_checksum_{threads}_threads_seconds"] = seconds
            rate = gigabytes / seconds
            print(
                f"cold  verify=checksum threads={threads}: {seconds:7.3f} s  ({rate:6.2f} GB/s)", flush=True
            )
    scale = MSMARCO_ROWS / args.rows * 768 / args.dim
    results["projection_8841823x768_seconds"] = {
        key.removesuffix("_seconds"): value * scale
        for key, value in results.items()
        if key.endswith("_seconds")
    }
    results["environment"] = environment(["numpy"])
    print(f"projected to 8,841,823 x 768 (x{scale:.2f}): {results['projection_8841823x768_seconds']}")
    print(f"saved {save(f'verify_{args.rows}x{args.dim}', results)}")


if __name__ == "__main__":
    main()
