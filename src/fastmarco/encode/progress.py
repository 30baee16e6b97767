"""Progress of a long encode: one self-rewriting status line on a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressLine:
    """One self-rewriting status line on a terminal; silent otherwise."""

    def __init__(self, stream: TextIO = sys.stderr, enabled: bool | None = None) -> None:
        self.stream = stream
        self.enabled = stream.isatty() if enabled is None else enabled
        self.started = time.perf_counter()
        self.first_rows: int | None = None

    def __call__(self, rows: int, total: int, tokens: int, shard: int) -> None:
        if not self.enabled:
            return
        if self.first_rows is None:
            self.first_rows = rows
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = (rows - self.first_rows) / elapsed
        eta = (total - rows) / rate if rate > 0 else float("inf")
        self.stream.write(
            f"\r{rows:,}/{total:,} passages  {rate:,.0f} passages/s  {tokens / elapsed:,.0f} tokens/s  "
            f"shard {shard}  ETA {eta:,.0f} s   "
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
