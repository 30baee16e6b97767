"""Atomic directory publication: readers see the old or the whole new directory, never neither."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from fastmarco._atomic import publish_directory, remove_stale_staging, staging_directory


def build(target: Path, generation: int) -> None:
    staging = staging_directory(target)
    for name in ("a.json", "b.json"):
        (staging / name).write_text(json.dumps({"generation": generation}))
    publish_directory(staging, target)


def test_a_reader_during_overwrites_always_sees_one_whole_directory(tmp_path: Path) -> None:
    target = tmp_path / "index"
    build(target, 0)
    stop = threading.Event()
    problems: list[str] = []
    reads = 0

    def read() -> None:
        """Open the path, list what it holds; a listing counts if the handle was still the published
        directory afterwards (a reader that lost the race to a publish just reopens)."""
        nonlocal reads
        while not stop.is_set():
            try:
                fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    names = sorted(os.listdir(fd))
                    current = os.fstat(fd).st_ino == os.stat(target).st_ino
                finally:
                    os.close(fd)
            except FileNotFoundError:
                problems.append("the directory was missing")
                continue
            if current:
                reads += 1
                if names != ["a.json", "b.json"]:
                    problems.append(f"saw {names}")

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for generation in range(1, 200):
            build(target, generation)
    finally:
        stop.set()
        reader.join()
    assert reads > 0 and problems == []
    assert json.loads((target / "a.json").read_text()) == {"generation": 199}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]  # no staging or old copies left


def test_staging_folders_of_dead_builds_are_removed_by_the_next_build(tmp_path: Path) -> None:
    target = tmp_path / "index"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    stale = tmp_path / f".index.staging-{int(dead.stdout)}-0badc0de"
    stale.mkdir()
    (stale / "index.faiss").write_bytes(b"half written")
    live = tmp_path / f".index.staging-{os.getppid()}-12345678"  # a build still running: kept
    live.mkdir()
    build(target, 1)
    assert not stale.exists() and live.exists()
    assert remove_stale_staging(target) == []
