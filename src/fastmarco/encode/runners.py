"""Who runs the parts of a multi-worker encode. A runner takes `PartTask`s (plain data: a `JobSpec`
narrowed to a line range, a device, a directory) and returns one `EncodeSummary` per task, relaying
progress. `ProcessRunner` starts one local process per task; a cluster runner (Ray) fits the same seam."""

from __future__ import annotations

import multiprocessing
import queue
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from fastmarco.encode.job import EncodeSummary, JobSpec, encode_update
from fastmarco.errors import WorkerError
from fastmarco.progress import Progress


@dataclass(frozen=True)
class PartTask:
    index: int
    device: str  # "cpu" or "cuda:N"
    threads: int  # the runtime's intra-op threads (0: its default)
    spec: JobSpec  # narrowed to this part's line range
    directory: str
    runtime: str = "auto"  # the model runtime (fastmarco.model.runtimes)


class Runner(Protocol):
    def run(self, tasks: Sequence[PartTask], progress: Progress | None) -> list[EncodeSummary]:
        """Run every task to completion; raise WorkerError naming the first task that failed."""
        ...


def run_part(task: PartTask, report: Callable[[int, int, int], None]) -> EncodeSummary:
    """One part, in whatever process or actor the runner chose: open the encoder, encode the range."""
    from fastmarco.encode.local import encode_job
    from fastmarco.model.encoder import Encoder
    from fastmarco.model.runtime import Device

    kind, _, number = task.device.partition(":")
    device: Device = "cuda" if kind == "cuda" else "cpu"
    encoder = Encoder.open(
        task.spec.model_directory,
        device=device,
        device_id=int(number or 0),
        threads=task.threads,
        runtime=task.runtime,
    )
    return encode_job(
        encoder,
        task.spec,
        task.directory,
        progress=lambda update: report(
            update.done, int(update.detail["tokens"]), int(update.detail["shards"])
        ),
    )


def _die_with_parent() -> None:
    """Linux: have the kernel kill this worker if the parent dies, so no orphan keeps writing a part."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _process_main(task: PartTask, messages: Any) -> None:
    _die_with_parent()
    try:
        summary = run_part(
            task, lambda rows, tokens, shards: messages.put(("progress", task.index, rows, tokens, shards))
        )
        messages.put(("done", task.index, asdict(summary)))
    except BaseException as exc:  # reported to the parent, which raises it with the worker named
        messages.put(("error", task.index, f"{type(exc).__name__}: {exc}"))


class ProcessRunner:
    """One spawned process per task on this machine (no forked CUDA or ORT state in the workers)."""

    def run(self, tasks: Sequence[PartTask], progress: Progress | None) -> list[EncodeSummary]:
        context = multiprocessing.get_context("spawn")
        messages = context.Queue()
        processes = [
            context.Process(target=_process_main, args=(task, messages), daemon=True) for task in tasks
        ]
        for process in processes:
            process.start()
        total = sum(task.spec.line_range.lines for task in tasks if task.spec.line_range is not None)
        rows, tokens, shards = [0] * len(tasks), [0] * len(tasks), [0] * len(tasks)
        summaries: dict[int, EncodeSummary] = {}
        try:
            while len(summaries) < len(tasks):
                try:
                    message = messages.get(timeout=0.5)
                except queue.Empty:
                    for task, process in zip(tasks, processes, strict=True):
                        if task.index not in summaries and not process.is_alive() and messages.empty():
                            raise WorkerError(
                                f"worker {task.index} ({task.device}) exited with code {process.exitcode} "
                                "without finishing its part; rerun the same command to resume"
                            ) from None
                    continue
                kind, index = message[0], message[1]
                if kind == "progress":
                    rows[index], tokens[index], shards[index] = message[2], message[3], message[4]
                    if progress is not None:
                        progress(encode_update(sum(rows), total, sum(tokens), sum(shards)))
                elif kind == "done":
                    summaries[index] = EncodeSummary(**message[2])
                else:
                    raise WorkerError(f"worker {index} ({tasks[index].device}): {message[2]}")
        finally:
            for process in processes:
                if process.is_alive() and len(summaries) < len(tasks):
                    process.terminate()
                process.join()
        return [summaries[task.index] for task in tasks]
