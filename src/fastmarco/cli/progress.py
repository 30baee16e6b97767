"""How the CLI shows long work: one tqdm bar on stderr, only where stderr is a terminal. The API's
progress callbacks report counts (encode: rows of a total, with tokens and the shard; mine: queries
of a total); these adapters draw them, so no verb writes its own status line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class Bar:
    """A tqdm bar of `unit`s moved to an absolute count; silent (and free) when not `enabled`."""

    def __init__(self, unit: str, *, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.bar: Any = None
        self.unit = unit

    def show(self, done: int, total: int, **postfix: Any) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, unit=f" {self.unit}", unit_scale=True, file=sys.stderr, dynamic_ncols=True
            )
        self.bar.total = total
        self.bar.update(done - self.bar.n)
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def encode_progress(bar: Bar) -> Callable[[int, int, int, int], None]:
    """encode's callback: (rows done, rows in all, tokens so far, shards written)."""

    def show(rows: int, total: int, tokens: int, shard: int) -> None:
        bar.show(rows, total, tokens=f"{tokens:,}", shard=shard)

    return show


def count_progress(bar: Bar) -> Callable[[int, int], None]:
    """mine's callback: (done, total)."""

    def show(done: int, total: int) -> None:
        bar.show(done, total)
        if done >= total:
            bar.close()

    return show
