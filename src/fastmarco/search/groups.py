"""A grouped index searched as one: each shard group (its shards, its own index and exact refine) is
searched by a group searcher, in this process or on Ray actors, and the per-group top-k lists are
merged with the native `merge_topk`.

Every group answers every query with its own exact top-k (exact scores from its shards), so the
merged list is the top-k of the union of the groups' answers: for a flat index identical, ids and
order, to searching the whole shard set at once (ties go to the lower global row either way).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from fastmarco.errors import InputError
from fastmarco.search.backends import SearchResult, VectorIndex, open_group
from fastmarco.search.index import GROUPS_MANIFEST, GroupsManifest, check_shards_unchanged
from fastmarco.search.kernels import MISSING_ID, as_queries, capped_k, merge_topk
from fastmarco.store.shards import ShardSet


class GroupSearcher(Protocol):
    """Searches every group with the same queries: one SearchResult per group, in group order, rows
    numbered within the group. Never returns fewer results than groups: it raises instead."""

    def search(
        self, queries: npt.NDArray[np.float32], k: int, refine: int | None, threads: int
    ) -> list[SearchResult]: ...

    def close(self) -> None: ...


class LocalGroups:
    """Every group's VectorIndex opened in this process, searched one after another."""

    def __init__(self, indexes: list[VectorIndex]) -> None:
        self.indexes = indexes

    def search(
        self, queries: npt.NDArray[np.float32], k: int, refine: int | None, threads: int
    ) -> list[SearchResult]:
        return [index.search(queries, k, refine=refine, threads=threads) for index in self.indexes]

    def close(self) -> None:
        for index in self.indexes:
            index.close()


def _widen(result: SearchResult, k: int) -> SearchResult:
    """A group's result with missing slots up to k columns (a group of fewer rows returns fewer)."""
    short = k - result.rows.shape[1]
    if short <= 0:
        return result
    nq = result.rows.shape[0]
    blank = "" if result.ids.dtype == object else -1
    return SearchResult(
        np.hstack([result.scores, np.full((nq, short), -np.inf, dtype=result.scores.dtype)]),
        np.hstack([result.rows, np.full((nq, short), MISSING_ID, dtype=result.rows.dtype)]),
        np.hstack([result.ids, np.full((nq, short), blank, dtype=result.ids.dtype)]),
    )


def merge_group_results(results: Sequence[SearchResult], first_rows: Sequence[int]) -> SearchResult:
    """Merge per-group (nq, k) results (rows within each group) into one, rows global (a group of
    fewer rows than k is `_widen`ed to k first)."""
    scores = np.stack([r.scores for r in results])
    local_rows = np.stack([r.rows for r in results])
    offsets = np.asarray(first_rows, dtype=np.int64)
    merged_scores, merged_rows = merge_topk(scores, local_rows, offsets)
    # find each merged row among the groups' answers to take its id from the group that gave it
    ngroup, nq, k = local_rows.shape
    missing = local_rows == MISSING_ID
    global_rows = np.where(missing, -1, local_rows + offsets[:, None, None])
    by_query = global_rows.transpose(1, 0, 2).reshape(nq, ngroup * k)
    ids = np.stack([r.ids for r in results]).transpose(1, 0, 2).reshape(nq, ngroup * k)
    span = int(by_query.max(initial=0)) + 2  # keys query * span + row + 1 sort query by query
    keys = (np.arange(nq, dtype=np.int64)[:, None] * span + by_query + 1).ravel()
    order = np.argsort(keys, kind="stable")
    found = merged_rows != MISSING_ID
    wanted = (np.arange(nq, dtype=np.int64)[:, None] * span + np.where(found, merged_rows, -1) + 1).ravel()
    position = order[np.searchsorted(keys, wanted, sorter=order)]
    merged_ids = ids.ravel()[position].reshape(nq, k)
    merged_ids[~found] = "" if merged_ids.dtype == object else -1
    return SearchResult(merged_scores, merged_rows, merged_ids)


class GroupedIndex:
    """An opened grouped index (OUT/groups.json from `build_index_groups`), searched as one index.

    Safe to share across threads when its searcher is: the local one is (each group's VectorIndex
    is), and so is the Ray one (each call is its own set of actor tasks).
    """

    def __init__(self, directory: Path, manifest: GroupsManifest, searcher: GroupSearcher) -> None:
        self.directory = directory
        self.manifest = manifest
        self.searcher = searcher
        self.first_rows = [group.first_row for group in manifest.groups]
        self._shard_set: ShardSet | None = None

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        nprobe: int | None = None,
        verify: bool = True,
        ray: bool | str = False,
        actor_threads: int = 1,
        max_restarts: int = 1,
        timeout: float | None = None,
    ) -> GroupedIndex:
        """ray=False opens every group here; True (RAY_ADDRESS or a local cluster) or an address puts
        each group on its own Ray actor (`actor_threads` CPUs each), which opens and verifies it where
        it runs: the directory must be on storage the whole cluster sees. A dead actor is restarted
        up to `max_restarts` times and its search retried; past that, or past `timeout` seconds for
        one search, the search raises naming the group, never returning a partial answer."""
        root = Path(directory).resolve()
        manifest = GroupsManifest.load(root)
        shard_root = manifest.shard_directory(root)
        check_shards_unchanged(root / GROUPS_MANIFEST, shard_root, manifest.shards_manifest)
        if nprobe is not None and nprobe <= 0:
            raise InputError(f"nprobe must be positive, got {nprobe}")
        searcher: GroupSearcher
        if ray is False:
            searcher = LocalGroups(
                [open_group(root, group, nprobe=nprobe, verify=verify) for group in manifest.groups]
            )
        else:
            from fastmarco.search.ray_groups import RayGroups

            searcher = RayGroups.start(
                root,
                manifest.groups,
                address=None if ray is True else ray,
                nprobe=nprobe,
                verify=verify,
                actor_threads=actor_threads,
                max_restarts=max_restarts,
                timeout=timeout,
            )
        return cls(root, manifest, searcher)

    @property
    def rows(self) -> int:
        return self.manifest.rows

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def kind(self) -> str:
        return f"{self.manifest.kind} x {len(self.manifest.groups)} groups"

    @property
    def factory(self) -> str:
        return " | ".join(dict.fromkeys(group.factory for group in self.manifest.groups))

    @property
    def model_fingerprint(self) -> str | None:
        return self.manifest.model_fingerprint

    @property
    def model_directory(self) -> str | None:
        from fastmarco.store.shards import Manifest

        directory = Manifest.load(self.manifest.shard_directory(self.directory)).metadata.get("model", {})
        found = directory.get("directory")
        return found if isinstance(found, str) else None

    def stored_vectors(self) -> ShardSet:
        """The whole shard set behind the groups (opened on first use, its sizes and headers checked;
        the groups verified their shards' checksums at open): rows here are the global rows search
        returns."""
        if self._shard_set is None:
            self._shard_set = ShardSet.open(self.manifest.shard_directory(self.directory))
        return self._shard_set

    def search(
        self, queries: npt.ArrayLike, k: int, *, refine: int | None = None, threads: int = 0
    ) -> SearchResult:
        """Top-k of (nq, dim) query vectors over every group: exact scores, global rows, ids; k is
        capped at the rows of all groups."""
        q = as_queries(queries, self.dim)
        k = capped_k(k, self.rows, self.directory)
        found = [_widen(r, k) for r in self.searcher.search(q, k, refine, threads)]
        return merge_group_results(found, self.first_rows)

    def close(self) -> None:
        self.searcher.close()

    def __enter__(self) -> GroupedIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_search_index(
    directory: str | os.PathLike[str],
    *,
    nprobe: int | None = None,
    verify: bool = True,
    ray: bool | str = False,
) -> VectorIndex | GroupedIndex:
    """INDEX_DIR or a grouped index directory, whichever `directory` holds; ray= only for grouped."""
    if (Path(directory) / GROUPS_MANIFEST).is_file():
        return GroupedIndex.open(directory, nprobe=nprobe, verify=verify, ray=ray)
    if ray is not False:
        raise InputError(
            f"{directory} is one index, not a grouped one: Ray serves shard groups "
            "(build them with `fastmarco index --groups N`)"
        )
    return VectorIndex.open(directory, nprobe=nprobe, verify=verify)
