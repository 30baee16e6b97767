"""`fastmarco encode --devices 0,1`: one worker process per device, contiguous corpus parts, one shard set.

The corpus lines are cut into contiguous parts at multiples of rows_per_shard lines. With no bad
lines, every shard then holds the same rows, encoded in the same chunks, as in a one-worker run, so
the merged directory is byte-identical to it. Each part is an ordinary resumable encode into
OUT/.parts/part-K (fastmarco.corpus); rerunning the command resumes every part. When all parts are
done, their files are hard-linked into OUT under their final names, one manifest is written with
cursors and skipped-line counts made global, and the parts are removed: a crash at any point leaves
either resumable parts or the finished set.

Duplicate ids are caught inside a part by its worker and across parts at the merge. A duplicate
that spans two parts is an error in both --on-bad-line modes, naming both lines: skipping it would
mean re-encoding the later part, and nothing is dropped silently.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fastmarco._atomic import fsync_dir, write_bytes_atomic
from fastmarco.corpus import (
    DEFAULT_CHUNK_ROWS,
    SKIPPED_NAME,
    EncodeMismatchError,
    EncodeSummary,
    LineRange,
    OnBadLine,
    check_same_job,
    count_lines,
    detect_id_type,
    encode_corpus,
    job_metadata,
    remove_shard_set,
)
from fastmarco.formats import FormatError
from fastmarco.shards import MANIFEST_NAME, DType, Manifest, ShardEntry, ShardSet

PARTS_NAME = ".parts"
PLAN_NAME = "plan.json"


class EncodeWorkerError(RuntimeError):
    """A worker process failed; the message names the worker, its device and its error."""


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
            raise ValueError(f"--devices: {item!r} is not a GPU number (0, 1, ...), 'cuda:N' or 'cpu'")
    if not devices:
        raise ValueError("--devices: give at least one device")
    return devices


def line_offsets(path: Path, lines: Sequence[int]) -> list[int]:
    """Byte offset at which each of the (sorted) line counts ends: where line L+1 starts."""
    wanted = list(lines)
    offsets: list[int] = []
    newlines_before = position = 0
    with open(path, "rb") as handle:
        while len(offsets) < len(wanted) and (block := handle.read(16 << 20)):
            count = block.count(b"\n")
            while len(offsets) < len(wanted) and wanted[len(offsets)] <= newlines_before + count:
                needed = wanted[len(offsets)] - newlines_before
                if needed == 0:
                    offsets.append(position)
                    continue
                ends = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == ord("\n"))
                offsets.append(position + int(ends[needed - 1]) + 1)
            newlines_before += count
            position += len(block)
    offsets.extend([position] * (len(wanted) - len(offsets)))  # the last line has no newline
    return offsets


def plan_parts(corpus: Path, workers: int, rows_per_shard: int) -> list[LineRange]:
    """Contiguous line ranges, cut at shard boundaries, as even as whole shards allow."""
    total = count_lines(corpus)
    shards = max(1, -(-total // rows_per_shard))
    parts = max(1, min(workers, shards))
    starts = [(k * shards // parts) * rows_per_shard for k in range(parts)]
    stops = [*starts[1:], total]
    return [
        LineRange(start, byte, stop)
        for start, byte, stop in zip(starts, line_offsets(corpus, starts), stops, strict=True)
    ]


@dataclass(frozen=True)
class _PartTask:
    index: int
    device: str
    threads: int
    model: str
    corpus: str
    directory: str
    line_range: LineRange
    rows_per_shard: int
    dtype: DType
    on_bad_line: OnBadLine
    chunk_rows: int


def _die_with_parent() -> None:
    """Linux: have the kernel kill this worker if the parent dies, so no orphan keeps writing a part."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _run_part(task: _PartTask, messages: Any) -> None:
    _die_with_parent()
    try:
        from fastmarco.encoder import Device, Encoder

        kind, _, number = task.device.partition(":")
        device: Device = "cuda" if kind == "cuda" else "cpu"
        encoder = Encoder.open(task.model, device=device, device_id=int(number or 0), threads=task.threads)

        def report(rows: int, total: int, tokens: int, shards: int) -> None:
            messages.put(("progress", task.index, rows, tokens, shards))

        summary = encode_corpus(
            encoder,
            task.corpus,
            task.directory,
            rows_per_shard=task.rows_per_shard,
            dtype=task.dtype,
            on_bad_line=task.on_bad_line,
            chunk_rows=task.chunk_rows,
            progress=report,
            line_range=task.line_range,
        )
        messages.put(("done", task.index, asdict(summary)))
    except BaseException as exc:  # reported to the parent, which raises it with the worker named
        messages.put(("error", task.index, f"{type(exc).__name__}: {exc}"))


def _load_plan(parts_dir: Path, plan: dict[str, Any]) -> None:
    path = parts_dir / PLAN_NAME
    if path.is_file():
        existing = json.loads(path.read_text(encoding="utf-8"))
        if existing != plan:
            raise EncodeMismatchError(
                f"{path}: these parts were planned for {len(existing['parts'])} workers over another corpus "
                f"or shard size; rerun with the same --devices count and options, or pass --restart"
            )
        return
    parts_dir.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, (json.dumps(plan, indent=2) + "\n").encode())


def _find_lines(corpus: Path, pid: str) -> list[int]:
    prefix = pid.encode() + b"\t"
    with open(corpus, "rb") as handle:
        return [number for number, raw in enumerate(handle, 1) if raw.startswith(prefix)]


def _check_no_duplicates_across_parts(corpus: Path, parts: list[ShardSet]) -> None:
    ids = np.concatenate([part.ids() for part in parts])
    values, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        pid = str(values[np.argmax(counts > 1)])
        lines = _find_lines(corpus, pid)
        raise FormatError(
            corpus,
            lines[-1],
            f"duplicate id {pid} (also on line {lines[0]}); the two lines fell to different workers, "
            "so it cannot be skipped: fix the corpus or encode it with one device",
        )


def _merge(out: Path, corpus: Path, parts_dir: Path, count: int, metadata: dict[str, Any]) -> Manifest:
    directories = [parts_dir / f"part-{k}" for k in range(count)]
    parts = [ShardSet.open(d, verify="checksum") for d in directories]
    _check_no_duplicates_across_parts(corpus, parts)
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
                (out / target).unlink(missing_ok=True)
                os.link(part.directory / source, out / target)
            cursor = dict(entry.cursor or {})
            if cursor:
                cursor["skipped"] = int(cursor["skipped"]) + skipped_before
                cursor["skipped_bytes"] = int(cursor["skipped_bytes"]) + len(skipped_lines)
            entries.append(
                ShardEntry(
                    vectors_name, ids_name, entry.rows, entry.checksum, entry.ids_checksum, cursor or None
                )
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
        first.dim, first.dtype, first.id_type, first.rows_per_shard, metadata, entries, complete=True
    )
    manifest.save(out)
    shutil.rmtree(parts_dir)
    return manifest


def encode_corpus_on_devices(
    model: str | os.PathLike[str],
    corpus: str | os.PathLike[str],
    out: str | os.PathLike[str],
    devices: Sequence[str],
    *,
    rows_per_shard: int = 1_000_000,
    dtype: DType = "fp16",
    on_bad_line: OnBadLine = "error",
    restart: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Callable[[int, int, int, int], None] | None = None,
) -> EncodeSummary:
    """Encode `corpus` into `out` with one worker process per entry of `devices` (see the module doc)."""
    model_dir, corpus_path, out_path = Path(model), Path(corpus), Path(out)
    if not corpus_path.is_file():
        raise FileNotFoundError(f"{corpus_path}: corpus not found")
    model_manifest = json.loads((model_dir / "fastmarco.json").read_text(encoding="utf-8"))
    started = time.perf_counter()
    parts_dir = out_path / PARTS_NAME
    if restart:
        if out_path.is_dir():
            remove_shard_set(out_path)
        shutil.rmtree(parts_dir, ignore_errors=True)
    id_type = detect_id_type(corpus_path)
    metadata = job_metadata(model_dir, model_manifest, corpus_path, dtype, id_type, chunk_rows)
    if (out_path / MANIFEST_NAME).exists():
        existing = Manifest.load(out_path)
        check_same_job(existing, metadata, out_path, rows_per_shard)
        if not existing.complete:
            raise EncodeMismatchError(
                f"{out_path}: a one-worker encode is in progress here; resume it without --devices, "
                "or pass --restart"
            )
        return EncodeSummary.of_complete(out_path, ",".join(devices))

    line_ranges = plan_parts(corpus_path, len(devices), rows_per_shard)
    plan = {
        "corpus": metadata["corpus"]["fingerprint"],  # hashing a 3 GB corpus once is enough
        "rows_per_shard": rows_per_shard,
        "parts": [asdict(r) for r in line_ranges],
    }
    _load_plan(parts_dir, plan)
    cpu_workers = sum(device == "cpu" for device in devices[: len(line_ranges)])
    threads = max(1, (os.cpu_count() or 1) // cpu_workers) if cpu_workers else 0
    tasks = [
        _PartTask(
            k,
            devices[k],
            threads if devices[k] == "cpu" else 0,
            str(model_dir),
            str(corpus_path),
            str(parts_dir / f"part-{k}"),
            line_range,
            rows_per_shard,
            dtype,
            on_bad_line,
            chunk_rows,
        )
        for k, line_range in enumerate(line_ranges)
    ]
    summaries = _run_workers(tasks, progress)
    manifest = _merge(out_path, corpus_path, parts_dir, len(tasks), metadata)
    seconds = time.perf_counter() - started
    resumed_at = sum(int(s["resumed_at_row"]) for s in summaries)
    return EncodeSummary(
        out=str(out_path),
        rows=manifest.rows,
        shards=len(manifest.shards),
        skipped=sum(int(s["skipped"]) for s in summaries),
        truncated=sum(int(s["truncated"]) for s in summaries),
        tokens=sum(int(s["tokens"]) for s in summaries),
        seconds=seconds,
        passages_per_second=(manifest.rows - resumed_at) / seconds if seconds > 0 else 0.0,
        resumed_at_row=resumed_at,
        device=",".join(task.device for task in tasks),
    )


def _run_workers(
    tasks: list[_PartTask],
    progress: Callable[[int, int, int, int], None] | None,
) -> list[dict[str, Any]]:
    """Start one process per task, relay progress, and raise the first failure with its worker named."""
    context = multiprocessing.get_context("spawn")  # no forked CUDA or ORT state in the workers
    messages = context.Queue()
    processes = [context.Process(target=_run_part, args=(task, messages), daemon=True) for task in tasks]
    for process in processes:
        process.start()
    total = sum(task.line_range.stop_line - task.line_range.start_line for task in tasks)
    rows, tokens, shards = [0] * len(tasks), [0] * len(tasks), [0] * len(tasks)
    summaries: dict[int, dict[str, Any]] = {}
    try:
        while len(summaries) < len(tasks):
            try:
                message = messages.get(timeout=0.5)
            except queue.Empty:
                for task, process in zip(tasks, processes, strict=True):
                    if task.index not in summaries and not process.is_alive() and messages.empty():
                        raise EncodeWorkerError(
                            f"worker {task.index} ({task.device}) exited with code {process.exitcode} "
                            "without finishing its part; rerun the same command to resume"
                        ) from None
                continue
            kind, index = message[0], message[1]
            if kind == "progress":
                rows[index], tokens[index], shards[index] = message[2], message[3], message[4]
                if progress is not None:
                    progress(sum(rows), total, sum(tokens), sum(shards))
            elif kind == "done":
                summaries[index] = message[2]
            else:
                raise EncodeWorkerError(f"worker {index} ({tasks[index].device}): {message[2]}")
    finally:
        for process in processes:
            if process.is_alive() and len(summaries) < len(tasks):
                process.terminate()
            process.join()
    return [summaries[k] for k in range(len(tasks))]
