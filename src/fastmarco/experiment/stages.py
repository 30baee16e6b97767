"""Stages of an experiment and their cache.

A stage (export, encode, index, retrieve, bm25, rerank, fuse, eval) writes its output into its own
folder, `<output>/cache/<kind>-<fingerprint>`, named by a content fingerprint of what it is made
from: its kind, its parameters and the fingerprints of its inputs (other stages, or files by their
content). A stage whose folder holds `stage.json` (written last, atomically) is done: a second
invocation reuses it, and changing one parameter recomputes that stage and what depends on it only.
A folder without `stage.json` is what an interrupted stage left: it is removed and the stage rerun.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastmarco import fingerprints
from fastmarco._atomic import write_bytes_atomic

DONE_NAME = "stage.json"


@dataclass(frozen=True)
class FileInput:
    """A file a stage reads, known by its content."""

    path: Path

    @property
    def label(self) -> str:
        return self.path.name


Action = Callable[[Path, list[Path]], None]  # (the stage's folder, its inputs' paths) -> None


@dataclass(eq=False)
class Stage:
    """One step: `action(folder, input_paths)` writes its output into `folder`. `output` names the file
    or folder in it that later stages read (its `path`)."""

    kind: str
    label: str
    params: dict[str, Any]
    inputs: Sequence[Stage | FileInput]
    action: Action
    output: str
    fingerprint: str = ""
    folder: Path = field(default=Path())

    @property
    def path(self) -> Path:
        return self.folder / self.output


@dataclass(frozen=True)
class StageRecord:
    kind: str
    label: str
    fingerprint: str
    cached: bool
    seconds: float


class Cache:
    """Fingerprints stages and runs the ones not already done, each once per invocation."""

    def __init__(self, root: Path, say: Callable[[str], None]) -> None:
        self.root = root
        self.say = say
        self._file_prints: dict[Path, str] = {}
        self.records: list[StageRecord] = []
        self._done: set[str] = set()

    def fingerprint(self, item: Stage | FileInput) -> str:
        if isinstance(item, FileInput):
            if item.path not in self._file_prints:
                if item.path.is_dir():
                    files = sorted(p for p in item.path.rglob("*") if p.is_file())
                    self._file_prints[item.path] = fingerprints.of_files(files)
                else:
                    self._file_prints[item.path] = fingerprints.of_file(item.path)
            return self._file_prints[item.path]
        if not item.fingerprint:
            parts = [fingerprints.of_settings({"kind": item.kind, **item.params})]
            item.fingerprint = fingerprints.combine(*parts, *(self.fingerprint(i) for i in item.inputs))
            item.folder = self.root / f"{item.kind}-{item.fingerprint}"
        return item.fingerprint

    def run(self, stage: Stage, position: int, count: int) -> None:
        """Run `stage` unless done (its inputs must have been run already)."""
        self.fingerprint(stage)
        if stage.fingerprint in self._done:
            return
        self._done.add(stage.fingerprint)
        head = f"[{position}/{count}] {stage.kind} {stage.label}"
        if (stage.folder / DONE_NAME).is_file():
            self.say(f"{head}: cached")
            self.records.append(StageRecord(stage.kind, stage.label, stage.fingerprint, True, 0.0))
            return
        if stage.folder.exists():  # an interrupted run of this stage
            shutil.rmtree(stage.folder)
        stage.folder.mkdir(parents=True)
        self.say(f"{head} ...")
        started = time.perf_counter()
        stage.action(stage.folder, [i.path for i in stage.inputs])
        seconds = time.perf_counter() - started
        record = {
            "kind": stage.kind,
            "label": stage.label,
            "params": stage.params,
            "seconds": round(seconds, 3),
        }
        write_bytes_atomic(stage.folder / DONE_NAME, (json.dumps(record, indent=2) + "\n").encode())
        self.say(f"{head}: done in {seconds:.1f} s")
        self.records.append(StageRecord(stage.kind, stage.label, stage.fingerprint, False, round(seconds, 3)))


def in_order(finals: Sequence[Stage]) -> list[Stage]:
    """Every stage the `finals` need, each after its inputs, each once."""
    ordered: list[Stage] = []
    seen: set[int] = set()

    def visit(stage: Stage) -> None:
        if id(stage) in seen:
            return
        seen.add(id(stage))
        for item in stage.inputs:
            if isinstance(item, Stage):
                visit(item)
        ordered.append(stage)

    for stage in finals:
        visit(stage)
    return ordered
