"""Atomic publication of files and directories.

Files: write a temporary sibling, fsync, rename over the target, fsync the directory.

Directories: build everything in a staging sibling (`.<name>.staging-<pid>-<random>`), fsync its
files, then swap it with the old directory in one `renameat2(RENAME_EXCHANGE)` (Linux 3.15+, on
ext4, xfs, btrfs, tmpfs and most local filesystems): a reader that opens the path sees the whole old
directory or the whole new one, never neither. The old one, now at the staging name, is removed after
the swap. Where the kernel or filesystem cannot exchange, the old directory is renamed aside and the
new one renamed in: then the path is missing for the instant between the two renames. A build killed
before the swap leaves only its staging folder; the next build into the same parent removes staging
folders whose process is gone.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import secrets
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from fastmarco._locks import output_lock
from fastmarco.errors import OutputExistsError

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicFile:
    """A file written as `<path>.tmp` and published over `path` by `commit` (synced, then renamed, then
    the directory synced); `abort` removes it. For writers that stream into a file over a long job."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self.handle: BinaryIO = open(self.tmp, "wb")  # noqa: SIM115  # closed by commit or abort

    def commit(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)

    def abort(self) -> None:
        self.handle.close()
        self.tmp.unlink(missing_ok=True)


def write_atomic(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Publish `path` only once `write` has fully succeeded; a crash leaves at most `<path>.tmp`."""
    target = AtomicFile(path)
    try:
        write(target.handle)
        target.commit()
    except BaseException:
        target.abort()
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, lambda handle: handle.write(data))


def refuse_existing(target: Path, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target}: already exists (pass overwrite=True / --overwrite to replace it)")


def _staging_prefix(target: Path) -> str:
    return f".{target.name}.staging-"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(target: Path) -> list[Path]:
    """Remove staging folders for `target` left by builds whose process no longer runs."""
    removed: list[Path] = []
    if not target.parent.is_dir():
        return removed
    prefix = _staging_prefix(target)
    for path in target.parent.iterdir():
        if not path.name.startswith(prefix):
            continue
        pid_text = path.name[len(prefix) :].split("-", 1)[0]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and not _process_alive(int(pid_text)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def staging_directory(target: Path) -> Path:
    """A new, empty staging folder beside `target` (stale ones of dead builds are removed first)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)
    staging = target.parent / f"{_staging_prefix(target)}{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    return staging


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False where that is unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:  # glibc < 2.28
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def publish_directory(staging: Path, target: Path) -> None:
    """fsync every file of a fully written `staging` directory, then put it at `target`, replacing
    an old directory there by an atomic exchange (see the module docstring)."""
    for path in staging.iterdir():
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    fsync_dir(staging)
    if target.exists():
        if not _exchange(staging, target):
            aside = staging.with_name(staging.name + "-old")
            os.replace(target, aside)
            os.replace(staging, target)
            staging = aside
        fsync_dir(target.parent)
        shutil.rmtree(staging)  # the old directory, now under the staging name
    else:
        os.replace(staging, target)
    fsync_dir(target.parent)


# What a published directory holds, written into it last: the verb that wrote it and its entries.
# `overwrite` replaces only a directory whose marker names the same verb and that holds nothing else.
OUTPUT_MARKER = ".fastmarco-output.json"


def check_replaceable(target: Path, verb: str, inputs: Sequence[str | os.PathLike[str]]) -> None:
    """Refuse to replace `target` unless fastmarco `verb` wrote it, it holds nothing besides what it
    wrote, and it is not and does not contain one of this call's own inputs."""
    if not target.exists():
        return
    resolved = target.resolve()
    for source in inputs:
        path = Path(source).resolve()
        if path == resolved or resolved in path.parents:
            raise OutputExistsError(
                f"{target}: holds this command's own input {source}; --overwrite never replaces it: "
                "choose another output folder"
            )
    entries = sorted(p.name for p in target.iterdir()) if target.is_dir() else []
    if target.is_dir() and not entries:
        return  # nothing in it to lose
    shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
    try:
        marker = json.loads((target / OUTPUT_MARKER).read_text(encoding="utf-8"))
        written_by, written = str(marker["verb"]), set(marker["files"])
    except (OSError, ValueError, KeyError, TypeError):
        what = f"it holds {shown}" if entries else "it is a file"
        raise OutputExistsError(
            f"{target}: not a folder fastmarco {verb} wrote ({what}); --overwrite replaces only "
            "those: remove it yourself or choose another output folder"
        ) from None
    if written_by != verb:
        raise OutputExistsError(
            f"{target}: written by fastmarco {written_by}, not {verb}; --overwrite replaces only a "
            f"{verb} output: choose another output folder"
        )
    others = [name for name in entries if name not in written and name != OUTPUT_MARKER]
    if others:
        raise OutputExistsError(
            f"{target}: holds files fastmarco {verb} did not write ({', '.join(others[:5])}); "
            "--overwrite would delete them: move them out or choose another output folder"
        )


@contextmanager
def publishing(
    target: Path, *, overwrite: bool, verb: str, inputs: Sequence[str | os.PathLike[str]] = ()
) -> Iterator[Path]:
    """How every verb that writes a whole directory publishes it: one writer at a time (an flock on
    `.<name>.lock` beside it), an existing TARGET refused unless `overwrite` and replaceable (see
    `check_replaceable`: `inputs` are the verb's own), an empty staging folder to build in, and on
    success the marker written and an atomic swap into place; on any error nothing is published and
    the staging folder is removed."""
    with output_lock(target.parent / f".{target.name}.lock", str(target)):
        refuse_existing(target, overwrite)
        check_replaceable(target, verb, inputs)
        staging = staging_directory(target)
        try:
            yield staging
            listing = {"verb": verb, "files": sorted(p.name for p in staging.iterdir())}
            write_bytes_atomic(staging / OUTPUT_MARKER, json.dumps(listing, indent=1).encode())
            publish_directory(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
