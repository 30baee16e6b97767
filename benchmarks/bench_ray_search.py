"""What sharded search on Ray costs at small scale: the same shard set (synthetic clustered unit
vectors, fp16, four shards) searched exactly by one flat index in one process, by a grouped flat
index (2 groups) in one process, and by the same groups on two Ray actors of a local cluster, in one
run on this machine: one-query latency (p50, p99) and the time of one batch. Every answer is checked
to equal the single index's (ids and order). Query encoding is left out: it is the same for all three.

    python benchmarks/bench_ray_search.py [--rows 200000] [--dim 384]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import environment, save

from fastmarco.search.backends import VectorIndex
from fastmarco.search.groups import GroupedIndex
from fastmarco.search.index import build_index, build_index_groups
from fastmarco.store.shards import write_shards


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((256, dim)).astype(np.float32)
    x = centres[rng.integers(0, 256, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def measure(index: Any, queries: np.ndarray, k: int, reference: Any) -> dict[str, Any]:
    index.search(queries[:1], k)  # warm: page cache, actors' first call
    latencies = []
    for row in queries[:200]:
        started = time.perf_counter()
        index.search(row[None, :], k)
        latencies.append(1000 * (time.perf_counter() - started))
    started = time.perf_counter()
    batch = index.search(queries, k)
    batch_seconds = time.perf_counter() - started
    return {
        "one_query_ms": {
            "p50": round(float(np.percentile(latencies, 50)), 2),
            "p99": round(float(np.percentile(latencies, 99)), 2),
        },
        "batch_seconds": round(batch_seconds, 3),
        "batch_qps": round(len(queries) / batch_seconds, 1),
        "identical_to_single_index": bool(
            (batch.ids == reference.ids).all() and (batch.rows == reference.rows).all()
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args()
    import ray

    work = Path(tempfile.mkdtemp(prefix="bench-ray-search-"))
    vectors = clustered(args.rows, args.dim, 0)
    write_shards(work / "shards", vectors, np.arange(args.rows), rows_per_shard=args.rows // 4)
    build_index(work / "shards", work / "single", kind="flat")
    build_index_groups(work / "shards", work / "grouped", 2, kind="flat")
    queries = clustered(args.queries, args.dim, 1)
    single = VectorIndex.open(work / "single")
    reference = single.search(queries, args.k)
    results = {"single index, one process": measure(single, queries, args.k, reference)}
    print("single", json.dumps(results["single index, one process"]), flush=True)
    local = GroupedIndex.open(work / "grouped")
    results["2 groups, one process"] = measure(local, queries, args.k, reference)
    print("local groups", json.dumps(results["2 groups, one process"]), flush=True)
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    with GroupedIndex.open(work / "grouped", ray=True) as on_ray:
        start_seconds = time.perf_counter() - started
        results["2 groups, 2 Ray actors"] = measure(on_ray, queries, args.k, reference)
    ray.shutdown()
    results["2 groups, 2 Ray actors"]["cluster_and_actor_start_seconds"] = round(start_seconds, 2)
    print("ray groups", json.dumps(results["2 groups, 2 Ray actors"]), flush=True)
    body = {"rows": args.rows, "dim": args.dim, "queries": args.queries, "k": args.k, "runs": results}
    print(save("ray_search", body | {"environment": environment(["fastmarco", "ray", "numpy"])}))


if __name__ == "__main__":
    main()
