"""One shape for the progress of long work. Every API function that runs long (encode, mine, index
builds, checksum verification, batch embedding and scoring) takes `progress: Progress | None` and
calls it with `Update`s; front ends decide how to show them (the CLI: `cli/progress.py`, one tqdm bar
per task on a terminal, notes as lines), tests and benchmarks can record them as they are."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Update:
    """Where one task stands: `done` of `total` `unit`s (absolute counts, not increments), or a `note`
    (a step worth a line of its own, such as "training on 100,000 rows"); `detail` adds figures a
    front end may show beside the count (tokens so far, the shard being written)."""

    task: str
    done: int = 0
    total: int | None = None
    unit: str = ""
    note: str = ""
    detail: Mapping[str, int | str] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.total is not None and self.done >= self.total


Progress = Callable[[Update], None]


def noting(progress: Progress | None, task: str) -> Callable[[str], None]:
    """A `say(message)` that reports each message as a note of `task` (silent without `progress`)."""
    if progress is None:
        return lambda message: None
    return lambda message: progress(Update(task, note=message))
