"""Content fingerprints, one way for the whole project: XXH3-64 (the native core's checksum), hex.

Every fingerprint is of content, never of a path, a size or a modification time alone: a file edited
in place, copied with its mtime kept, or restored from a backup reads as what it holds."""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fastmarco import _native


def of_bytes(data: bytes | bytearray | memoryview | mmap.mmap) -> str:
    """XXH3-64 of the bytes, as 16 hex digits."""
    return f"{_native.checksum(data):016x}"


def of_file(path: str | os.PathLike[str]) -> str:
    """`size:xxh3` of a whole file, read through a memory map (no copy of a large corpus)."""
    size = Path(path).stat().st_size
    if size == 0:
        return "0:0"
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
        return f"{size}:{_native.checksum(view):016x}"


def of_files(paths: Iterable[Path]) -> str:
    """Of several files' names and contents, in the order given: a directory's identity."""
    return of_bytes("\0".join(f"{path.name}\0{of_file(path)}" for path in paths).encode())


def of_settings(settings: Mapping[str, Any]) -> str:
    """Of settings (JSON values), independent of their order."""
    return of_bytes(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode())


def combine(*fingerprints: str) -> str:
    """One fingerprint of several, in order."""
    return of_bytes("\0".join(fingerprints).encode())
