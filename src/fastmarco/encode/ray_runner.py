"""`fastmarco encode --ray`: the parts of a multi-worker encode run by long-lived Ray actors.

Ray schedules; fastmarco does not. Each part (a line range cut at shard boundaries, as `--devices`
cuts them) is encoded by one actor holding one `Encoder` (`num_gpus=1` for a GPU part, CPU otherwise)
into OUT/.parts/part-K on the filesystem every node sees, as an ordinary resumable encode. An actor
that dies (a node lost, `ray.kill`) is restarted by Ray and its task retried: the part resumes from
its own finished shards, so the merged shard set is byte-identical to a one-process encode. The
driver polls each actor's progress (actors run two threads: the encode and the progress calls).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from fastmarco._ray import NAMESPACE, describe_failure, import_ray
from fastmarco.encode.job import EncodeSummary, encode_update
from fastmarco.encode.runners import PartTask, run_part
from fastmarco.errors import WorkerError
from fastmarco.progress import Progress

ACTOR_NAME = "fastmarco-encode-part-{index}"


class _PartActor:
    """Encodes one part; `progress` answers while `encode` runs (max_concurrency=2)."""

    def __init__(self) -> None:
        self.done = (0, 0, 0)

    def encode(self, task: PartTask) -> dict[str, Any]:
        """{"summary": ...}, or {"error": "<type>: <message>"} for an error of the part itself (a bad
        line): returned, not raised, so it is not retried and needs no pickling of its class."""
        from dataclasses import asdict, replace

        # Ray exposes an actor's GPU as device 0 (CUDA_VISIBLE_DEVICES is set to the one it granted)
        local = replace(task, device="cuda:0") if task.device.startswith("cuda") else task

        def report(rows: int, tokens: int, shards: int) -> None:
            self.done = (rows, tokens, shards)

        try:
            return {"summary": asdict(run_part(local, report))}
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}

    def progress(self) -> tuple[int, int, int]:
        return self.done


class RayRunner:
    """Run `PartTask`s on a Ray cluster: `address` as `ray.init` takes it (None: RAY_ADDRESS or a
    local cluster started for the job). `max_restarts` bounds how often a dead actor is replaced."""

    def __init__(
        self, address: str | None = None, *, max_restarts: int = 3, poll_seconds: float = 0.5
    ) -> None:
        self.address = address
        self.max_restarts = max_restarts
        self.poll_seconds = poll_seconds

    def run(self, tasks: Sequence[PartTask], progress: Progress | None) -> list[EncodeSummary]:
        ray = import_ray(self.address)
        remote_actor = ray.remote(_PartActor)
        actors = [
            remote_actor.options(
                name=ACTOR_NAME.format(index=task.index),
                namespace=NAMESPACE,
                num_gpus=1 if task.device.startswith("cuda") else 0,
                num_cpus=max(1, task.threads),
                max_restarts=self.max_restarts,
                max_task_retries=self.max_restarts,
                max_concurrency=2,
                lifetime=None,
            ).remote()
            for task in tasks
        ]
        pending = {actor.encode.remote(task): task for actor, task in zip(actors, tasks, strict=True)}
        total = sum(task.spec.line_range.lines for task in tasks if task.spec.line_range is not None)
        summaries: dict[int, EncodeSummary] = {}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=self.poll_seconds)
                for ref in ready:
                    task = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except Exception as exc:  # an actor dead past its restarts, or Ray itself failing
                        raise WorkerError(
                            f"Ray worker {task.index} ({task.device}) failed: {describe_failure(exc)}; "
                            "rerun the same command to resume"
                        ) from exc
                    if "error" in result:
                        raise WorkerError(f"Ray worker {task.index} ({task.device}): {result['error']}")
                    summaries[task.index] = EncodeSummary(**result["summary"])
                if progress is not None:
                    rows, tokens, shards = self._progress(ray, actors, tasks, summaries)
                    progress(encode_update(rows, total, tokens, shards))
        finally:
            for actor in actors:
                ray.kill(actor, no_restart=True)
        return [summaries[task.index] for task in tasks]

    @staticmethod
    def _progress(
        ray: Any, actors: list[Any], tasks: Sequence[PartTask], summaries: dict[int, EncodeSummary]
    ) -> tuple[int, int, int]:
        rows = tokens = shards = 0
        for actor, task in zip(actors, tasks, strict=True):
            if task.index in summaries:
                s = summaries[task.index]
                rows, tokens, shards = rows + s.rows, tokens + s.tokens, shards + s.shards
                continue
            try:
                done = ray.get(actor.progress.remote(), timeout=5)
            except Exception:  # restarting: its progress is unknown for a moment
                continue
            rows, tokens, shards = rows + done[0], tokens + done[1], shards + done[2]
        return rows, tokens, shards


def wait_for_actor(index: int, timeout: float = 60.0) -> Any:
    """The actor encoding part `index` (for tests and operators: `ray.kill` it to see a restart)."""
    ray = import_ray(None)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return ray.get_actor(ACTOR_NAME.format(index=index), namespace=NAMESPACE)
        except ValueError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
