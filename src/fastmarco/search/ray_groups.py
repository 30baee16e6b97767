"""Shard groups held by long-lived Ray actors: each actor opens one group's INDEX_DIR (its shards,
its own index and exact refine) where Ray places it and answers every search with that group's
top-k; the driver sends the queries once (`ray.put`), one task per actor, and merges.

A dead actor is restarted by Ray (it reopens its group) and its search task retried, up to
`max_restarts` times; past that, or past the search timeout, the search raises a WorkerError
naming the group, so no caller ever gets the answer of some groups as if it were the whole index.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fastmarco._ray import NAMESPACE, describe_failure, import_ray
from fastmarco.errors import WorkerError
from fastmarco.search.backends import SearchResult, open_group
from fastmarco.search.index import ShardGroup

ACTOR_NAME = "fastmarco-search-{job}-{group}"


class _GroupActor:
    """One shard group's VectorIndex. An error opening it (a corrupt shard, a moved directory) is
    kept and reported by `ready`, not raised, so it reaches the driver as the message it is."""

    def __init__(self, root: str, group: ShardGroup, nprobe: int | None, verify: bool, threads: int) -> None:
        self.threads = threads  # its share of the node's cores, used when a search asks for "all"
        self.error: str | None = None
        try:
            self.index = open_group(Path(root), group, nprobe=nprobe, verify=verify)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def ready(self) -> str | None:
        return self.error

    def search(
        self, queries: npt.NDArray[np.float32], k: int, refine: int | None, threads: int
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[Any]]:
        result = self.index.search(queries, k, refine=refine, threads=threads or self.threads)
        return result.scores, result.rows, result.ids


class RayGroups:
    """One actor per group; see the module docstring for what happens when one dies."""

    def __init__(
        self, ray: Any, groups: Sequence[ShardGroup], actors: list[Any], timeout: float | None
    ) -> None:
        self.ray = ray
        self.groups = list(groups)
        self.actors = actors
        self.timeout = timeout

    @classmethod
    def start(
        cls,
        root: Path,
        groups: Sequence[ShardGroup],
        *,
        address: str | None,
        nprobe: int | None,
        verify: bool,
        actor_threads: int,
        max_restarts: int,
        timeout: float | None,
    ) -> RayGroups:
        """Start the actors and wait until every group is open (or raise naming the first that failed)."""
        ray = import_ray(address)
        remote_actor = ray.remote(_GroupActor)
        job = secrets.token_hex(4)
        actors = [
            remote_actor.options(
                name=ACTOR_NAME.format(job=job, group=group.directory),
                namespace=NAMESPACE,
                num_cpus=actor_threads,
                max_restarts=max_restarts,
                max_task_retries=max_restarts,
            ).remote(str(root), group, nprobe, verify, actor_threads)
            for group in groups
        ]
        searcher = cls(ray, groups, actors, timeout)
        try:
            errors = searcher._gather([actor.ready.remote() for actor in actors], "opening it")
            for group, error in zip(groups, errors, strict=True):
                if error is not None:
                    raise WorkerError(f"shard group {group.describe()} could not be opened: {error}")
        except BaseException:
            searcher.close()
            raise
        return searcher

    def search(
        self, queries: npt.NDArray[np.float32], k: int, refine: int | None, threads: int
    ) -> list[SearchResult]:
        shared = self.ray.put(queries)
        answers = self._gather(
            [actor.search.remote(shared, k, refine, threads) for actor in self.actors], "searching"
        )
        return [SearchResult(*answer) for answer in answers]

    def _gather(self, refs: list[Any], doing: str) -> list[Any]:
        """Every ref's value, or a WorkerError naming the first group that failed or did not answer."""
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=self.timeout)
        answered = {ref.hex() for ref in ready}
        values = []
        for group, ref in zip(self.groups, refs, strict=True):
            if ref.hex() not in answered:
                self._cancel(refs)
                raise WorkerError(
                    f"shard group {group.describe()} did not answer within {self.timeout} s while "
                    f"{doing}; no results returned"
                )
            try:
                values.append(self.ray.get(ref))
            except Exception as exc:  # the actor died past its restarts, or Ray itself failed
                raise WorkerError(
                    f"shard group {group.describe()} failed while {doing}: {describe_failure(exc)}; "
                    "no results returned"
                ) from exc
        return values

    def _cancel(self, refs: list[Any]) -> None:
        for ref in refs:
            try:
                self.ray.cancel(ref)
            except Exception:  # already finished, or its actor already gone: nothing to stop
                continue

    def close(self) -> None:
        for actor in self.actors:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:  # already dead: nothing to release
                continue
        self.actors = []
