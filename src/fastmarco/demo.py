"""The embedded default job: write seeded embeddings to shards, search them, check the answers."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastmarco.shards import ShardSet, ShardWriter


@dataclass(frozen=True)
class DemoReport:
    rows: int
    dim: int
    shards: int
    queries: int
    write_seconds: float
    search_seconds: float
    top1_hits: int
    matches_numpy: bool

    @property
    def queries_per_second(self) -> float:
        return self.queries / self.search_seconds


def run_demo(
    rows: int = 200_000,
    dim: int = 384,
    queries: int = 256,
    rows_per_shard: int = 50_000,
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
) -> DemoReport:
    """Each query is a noisy copy of a known row; exact cosine search must find that row first."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="fastmarco-demo-") as scratch:
        directory = Path(out) if out is not None else Path(scratch) / "shards"
        start = time.perf_counter()
        with ShardWriter(
            directory,
            dim=dim,
            dtype="fp16",
            rows_per_shard=rows_per_shard,
            metadata={"source": "fastmarco demo", "seed": seed},
        ) as writer:
            for first in range(0, rows, 10_000):
                block = rng.standard_normal((min(10_000, rows - first), dim), dtype=np.float32)
                block /= np.linalg.norm(block, axis=1, keepdims=True)
                writer.add(block, np.arange(first, first + len(block)) + 1_000_000)
        write_seconds = time.perf_counter() - start

        shard_set = ShardSet.open(directory, verify="checksum")
        targets = rng.choice(rows, size=queries, replace=False)
        all_rows = np.concatenate(list(shard_set.shard_vectors()))
        query_vectors = all_rows[targets].astype(np.float32)
        query_vectors += 0.02 * rng.standard_normal(query_vectors.shape, dtype=np.float32)
        start = time.perf_counter()
        _, found = shard_set.search(query_vectors, k=10, metric="cosine")
        search_seconds = time.perf_counter() - start
        rows64 = all_rows.astype(np.float64)
        cosine = (query_vectors @ rows64.T) / np.linalg.norm(query_vectors, axis=1, keepdims=True)
        cosine /= np.linalg.norm(rows64, axis=1)
        reference = np.argsort(-cosine, axis=1, kind="stable")[:, :10]
        return DemoReport(
            rows=len(shard_set),
            dim=dim,
            shards=len(shard_set.files),
            queries=queries,
            write_seconds=write_seconds,
            search_seconds=search_seconds,
            top1_hits=int((found[:, 0] == targets).sum()),
            matches_numpy=bool((found == reference).all()),
        )
