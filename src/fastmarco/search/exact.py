"""The exact family (kind `flat`): the native exact search over the fp16/fp32 shards themselves.
Nothing is built: the shards are the index (faiss's IndexFlat would hold n x d x 4 bytes, 27 GB at
8.8M x 768, and is slower)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fastmarco import _native
from fastmarco.search.backends import SearchResult
from fastmarco.search.index import IndexManifest
from fastmarco.search.kernels import Metric, as_queries, check_k, merge_topk
from fastmarco.search.kinds import (
    SEARCH_OVERHEAD_MS,
    BuildCost,
    FactoryShape,
    IndexKind,
    Serving,
    register_family,
    register_kind,
    scan_ms,
)
from fastmarco.store.shards import ShardSet

EXACT_FACTORY = "Flat"


def search_shards(
    shard_set: ShardSet, queries: npt.ArrayLike, k: int, metric: Metric = "ip", *, threads: int = 0
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Exact top-k over all shards: (scores, global row numbers), each (nq, k), best first.

    Missing slots (fewer than k rows) hold (-inf, MISSING_ID); map rows to ids with `shard_set.ids`.
    """
    q = as_queries(queries, shard_set.dim)
    check_k(k)
    shard_set.check_unchanged()
    nshard = len(shard_set.files)
    scores = np.empty((max(nshard, 1), q.shape[0], k), dtype=np.float32)
    rows = np.empty((max(nshard, 1), q.shape[0], k), dtype=np.int64)
    if nshard == 0:
        scores.fill(-np.inf)
        rows.fill(_native.MISSING_ID)
        return scores[0], rows[0]
    for s, f in enumerate(shard_set.files):
        if f.rows == 0:
            scores[s].fill(-np.inf)
            rows[s].fill(_native.MISSING_ID)
            continue
        _native.exact_search(q, f.vectors, k, metric, scores[s], rows[s], threads)
    if nshard == 1:
        return scores[0], rows[0]
    return merge_topk(scores, rows, shard_set.offsets[:-1])


@dataclass
class ExactBackend:
    """Exact inner-product search over every shard by the native core."""

    shard_set: ShardSet

    def search(
        self, queries: npt.NDArray[np.float32], k: int, *, threads: int = 0, refine: int | None = None
    ) -> SearchResult:
        """`refine` has nothing to do here: every score is exact already."""
        scores, rows = search_shards(self.shard_set, queries, k, threads=threads)
        return SearchResult(scores, rows, self.shard_set.ids(rows))


class ExactFamily:
    name = "exact"

    def claims(self, factory: str) -> bool:
        return factory == EXACT_FACTORY

    def describe(self, factory: str, dim: int) -> FactoryShape:
        return FactoryShape(EXACT_FACTORY, 0, 0, False, False, False, False)

    def cost(self, shard_set: ShardSet, shape: FactoryShape, train_rows: int) -> BuildCost:
        """Nothing is built (the checksum pass every build makes first is in no kind's estimate)."""
        return BuildCost(0, 0, 0.0)

    def search_defaults(self, shape: FactoryShape) -> tuple[int | None, int | None]:
        return None, None

    def serving(self, shard_set: ShardSet, shape: FactoryShape, refine: int) -> Serving:
        """Every row is read per query; the shards are maps (page cache), nothing is held besides."""
        itemsize = 2 if shard_set.dtype == "fp16" else 4
        return Serving(0, SEARCH_OVERHEAD_MS + scan_ms(len(shard_set) * shard_set.dim * itemsize))

    def build(
        self, shard_set: ShardSet, shape: FactoryShape, train_rows: int, device: str,
        say: Callable[[str], None], out: Path,
    ) -> dict[str, Any]:  # fmt: skip
        return {"index_bytes": 0}

    def open(
        self, directory: Path, manifest: IndexManifest, shard_set: ShardSet, nprobe: int | None
    ) -> ExactBackend:
        return ExactBackend(shard_set)


EXACT = register_family(ExactFamily())
register_kind(IndexKind("flat", EXACT, lambda rows, dim: EXACT_FACTORY, recall_at_10=1.0))
