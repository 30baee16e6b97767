"""`fastmarco encode --devices 0,1`: one worker per device, contiguous corpus parts, one shard set.

The corpus lines are cut into contiguous parts at multiples of rows_per_shard lines. With no bad
lines, every shard then holds the same rows, encoded in the same chunks, as in a one-worker run, so
the merged directory is byte-identical to it. Each part is an ordinary resumable encode into
OUT/.parts/part-K (fastmarco.encode.local); rerunning the command resumes every part. When all parts
are done, their files are hard-linked (copied where links fail, e.g. across filesystems) into OUT
under their final names, one manifest is written with cursors and skipped-line counts made global,
and the parts are removed: a crash at any point leaves either resumable parts or the finished set.

The corpus is hashed once, in the parent, into the `JobSpec` every worker receives.

Duplicate ids are caught inside a part by its worker and across parts at the merge. A duplicate
that spans two parts is an error in both --on-bad-line modes, naming both lines: skipping it would
mean re-encoding the later part, and nothing is dropped silently.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from fastmarco._atomic import fsync_dir, write_bytes_atomic
from fastmarco._locks import output_lock
from fastmarco.corpus.formats import CorpusFormat
from fastmarco.encode.job import (
    DEFAULT_CHUNK_ROWS,
    LOCK_NAME,
    SKIPPED_NAME,
    STAGES,
    Cursor,
    EncodeSummary,
    JobSpec,
    OnBadLine,
    remove_shard_set,
)
from fastmarco.encode.reader import plan_parts
from fastmarco.encode.runners import PartTask, ProcessRunner, Runner
from fastmarco.errors import EncodeMismatchError, FormatError, InputError
from fastmarco.progress import Progress
from fastmarco.store.shards import (
    DEFAULT_ROWS_PER_SHARD,
    MANIFEST_NAME,
    DType,
    Manifest,
    ShardEntry,
    ShardSet,
)

PARTS_NAME = ".parts"
PLAN_NAME = "plan.json"


def parse_devices(spec: str) -> list[str]:
    """'0,1' -> ['cuda:0', 'cuda:1']; 'cpu,cpu' -> two CPU workers; 'cuda:2' is accepted as is."""
    devices = []
    for item in (part.strip() for part in spec.split(",")):
        if item == "cpu":
            devices.append("cpu")
        elif item.isdigit():
            devices.append(f"cuda:{item}")
        elif item.startswith("cuda:") and item[5:].isdigit():
            devices.append(item)
        else:
            raise InputError(f"--devices: {item!r} is not a GPU number (0, 1, ...), 'cuda:N' or 'cpu'")
    if not devices:
        raise InputError("--devices: give at least one device")
    return devices


def _load_plan(parts_dir: Path, plan: dict[str, Any]) -> None:
    path = parts_dir / PLAN_NAME
    if path.is_file():
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            existing = None
        if existing != plan:
            raise EncodeMismatchError(
                f"{path}: these parts were planned for another --devices count, corpus or shard size; "
                "rerun with the same --devices count and options, or pass --restart"
            )
        return
    parts_dir.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, (json.dumps(plan, indent=2) + "\n").encode())


def _find_lines(corpus: Path, corpus_format: CorpusFormat, pid: str) -> list[int]:
    """The lines of `corpus` whose record has id `pid` (the error path only: it parses every line)."""
    return [line.number for line in corpus_format.lines(corpus) if line.record and line.record.id == pid]


def _check_no_duplicates_across_parts(
    corpus: Path, corpus_format: CorpusFormat, parts: list[ShardSet]
) -> None:
    ids = np.concatenate([part.ids() for part in parts])
    values, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        pid = str(values[np.argmax(counts > 1)])
        lines = _find_lines(corpus, corpus_format, pid)
        raise FormatError(
            corpus,
            lines[-1],
            f"duplicate id {pid} (also on line {lines[0]}); the two lines fell to different workers, "
            "so it cannot be skipped: fix the corpus or encode it with one device",
        )


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link `source` as `target`; copy it (fsynced) where the filesystem refuses links."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        temporary = target.with_name(target.name + ".tmp")
        shutil.copyfile(source, temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, target)


def merge_parts(out: Path, spec: JobSpec, directories: list[Path]) -> Manifest:
    """One shard set in `out` from finished part directories, in order (see the module docstring)."""
    parts = [ShardSet.open(d, verify="checksum") for d in directories]
    _check_no_duplicates_across_parts(Path(spec.corpus), spec.reader(), parts)
    first = parts[0].manifest
    entries: list[ShardEntry] = []
    skipped_lines = b""
    skipped_before = 0
    for part in parts:
        for entry in part.manifest.shards:
            index = len(entries)
            vectors_name = f"vectors-{index:05d}{Path(entry.vectors).suffix}"
            ids_name = f"ids-{index:05d}{Path(entry.ids).suffix}"
            for source, target in ((entry.vectors, vectors_name), (entry.ids, ids_name)):
                link_or_copy(part.directory / source, out / target)
            cursor = (
                Cursor.from_json(entry.cursor).after(skipped_before, len(skipped_lines)).to_json()
                if entry.cursor
                else None
            )
            entries.append(
                ShardEntry(vectors_name, ids_name, entry.rows, entry.checksum, entry.ids_checksum, cursor)
            )
        skipped_path = part.directory / SKIPPED_NAME
        if skipped_path.is_file():
            part_skipped = skipped_path.read_bytes()
            skipped_lines += part_skipped
            skipped_before += part_skipped.count(b"\n")
    if any((d / SKIPPED_NAME).is_file() for d in directories):
        write_bytes_atomic(out / SKIPPED_NAME, skipped_lines)
    fsync_dir(out)
    manifest = Manifest(
        first.dim, first.dtype, first.id_type, first.rows_per_shard, spec.metadata(), entries, complete=True
    )
    manifest.save(out)
    return manifest


def encode_corpus_on_devices(
    model: str | os.PathLike[str],
    corpus: str | os.PathLike[str],
    out: str | os.PathLike[str],
    devices: Sequence[str],
    *,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    dtype: DType = "fp16",
    on_bad_line: OnBadLine = "error",
    restart: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    format: str = "auto",
    progress: Progress | None = None,
    runner: Runner | None = None,
    runtime: str = "auto",
) -> EncodeSummary:
    """Encode `corpus` into `out` with one worker per entry of `devices` (see the module docstring);
    `runner` decides where the workers run (default: local processes); `runtime` is each worker's
    model runtime."""
    spec = JobSpec.create(
        model,
        corpus,
        rows_per_shard=rows_per_shard,
        dtype=dtype,
        on_bad_line=on_bad_line,
        chunk_rows=chunk_rows,
        format=format,
    )
    out_path = Path(out)
    with output_lock(out_path / LOCK_NAME, str(out_path)):
        return _encode_parts(spec, out_path, devices, restart, progress, runner or ProcessRunner(), runtime)


def _encode_parts(
    spec: JobSpec,
    out_path: Path,
    devices: Sequence[str],
    restart: bool,
    progress: Progress | None,
    runner: Runner,
    runtime: str,
) -> EncodeSummary:
    corpus_path, rows_per_shard = Path(spec.corpus), spec.rows_per_shard
    started = time.perf_counter()
    parts_dir = out_path / PARTS_NAME
    if restart:
        if out_path.is_dir():
            remove_shard_set(out_path)
        shutil.rmtree(parts_dir, ignore_errors=True)
    if (out_path / MANIFEST_NAME).exists():
        existing = Manifest.load(out_path)
        spec.check_same_job(existing, out_path)
        if not existing.complete:
            raise EncodeMismatchError(
                f"{out_path}: a one-worker encode is in progress here; resume it without --devices, "
                "or pass --restart"
            )
        return EncodeSummary.of_complete(out_path, ",".join(devices))

    line_ranges = plan_parts(corpus_path, len(devices), rows_per_shard)
    plan = {
        "corpus": spec.corpus_fingerprint,
        "rows_per_shard": rows_per_shard,
        "parts": [asdict(r) for r in line_ranges],
    }
    _load_plan(parts_dir, plan)
    cpu_workers = sum(device == "cpu" for device in devices[: len(line_ranges)])
    threads = max(1, (os.cpu_count() or 1) // cpu_workers) if cpu_workers else 0
    tasks = [
        PartTask(
            k,
            devices[k],
            threads if devices[k] == "cpu" else 0,
            spec.part(line_range),
            str(parts_dir / f"part-{k}"),
            runtime,
        )
        for k, line_range in enumerate(line_ranges)
    ]
    summaries = runner.run(tasks, progress)
    manifest = merge_parts(out_path, spec, [Path(task.directory) for task in tasks])
    shutil.rmtree(parts_dir)
    seconds = time.perf_counter() - started
    resumed_at = sum(s.resumed_at_row for s in summaries)
    return EncodeSummary(
        out=str(out_path),
        rows=manifest.rows,
        shards=len(manifest.shards),
        skipped=sum(s.skipped for s in summaries),
        truncated=sum(s.truncated for s in summaries),
        tokens=sum(s.tokens for s in summaries),
        seconds=seconds,
        passages_per_second=(manifest.rows - resumed_at) / seconds if seconds > 0 else 0.0,
        resumed_at_row=resumed_at,
        device=",".join(task.device for task in tasks),
        stage_seconds={stage: sum(s.stage_seconds.get(stage, 0.0) for s in summaries) for stage in STAGES},
    )
