"""How the CLI shows long work: the one renderer of the API's progress `Update`s. Counts become a tqdm
bar per task on stderr, only where stderr is a terminal; notes (an index build's steps) are lines on
stderr, always, printed above a running bar."""

from __future__ import annotations

import sys
from typing import Any

import click

from fastmarco.progress import Update


class Reporter:
    """A `Progress` callback for the CLI. `bars`: draw count bars (default: stderr is a terminal);
    `notes`: print notes. `close` ends any bar still open (a verb calls it when it stops)."""

    def __init__(self, *, bars: bool | None = None, notes: bool = True) -> None:
        self.bars_enabled = sys.stderr.isatty() if bars is None else bars
        self.notes_enabled = notes
        self.bars: dict[str, Any] = {}

    def __call__(self, update: Update) -> None:
        if update.note:
            if self.notes_enabled:
                self._write(update.note)
            return
        if not self.bars_enabled:
            return
        bar = self.bars.get(update.task)
        if bar is None:
            from tqdm import tqdm

            bar = self.bars[update.task] = tqdm(
                total=update.total,
                unit=f" {update.unit}" if update.unit else "it",
                unit_scale=True,
                desc=update.task,
                file=sys.stderr,
                dynamic_ncols=True,
            )
        bar.total = update.total
        bar.update(update.done - bar.n)
        if update.detail:
            bar.set_postfix({k: f"{v:,}" if isinstance(v, int) else v for k, v in update.detail.items()})
        if update.finished:
            bar.close()
            del self.bars[update.task]

    def _write(self, line: str) -> None:
        if self.bars:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stderr)
        else:
            click.echo(line, err=True)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
