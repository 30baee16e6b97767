"""One writer per output: an flock'd lock file that names its holder's pid.

The kernel drops an flock when its process dies, so a SIGKILLed writer never leaves a stale lock; a
second writer into the same output is refused at once, naming the pid that holds it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastmarco.errors import BusyError


@contextmanager
def output_lock(lock_path: Path, what: str) -> Iterator[None]:
    """Hold `lock_path` for the block; BusyError if another process holds it."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise BusyError(
                f"{what}: another fastmarco process (pid {holder}) is writing it; "
                "wait for it to finish or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # an idle lock file is empty, so finished outputs compare byte for byte
    finally:
        os.close(fd)
