"""Atomic file publication: write a temporary sibling, fsync, rename, fsync the directory."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Publish `path` only once `write` has fully succeeded; a crash leaves at most `<path>.tmp`."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, lambda handle: handle.write(data))


def publish_directory(staging: Path, target: Path) -> None:
    """fsync every file of a fully written `staging` directory, then move it to `target`
    (replacing an old one) and fsync the parent: readers see the old directory or the whole new one."""
    for path in staging.iterdir():
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    fsync_dir(target.parent)
