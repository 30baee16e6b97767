"""`fastmarco encode` in one process: a whole collection.tsv to embedding shards, bounded and resumable.

The corpus is streamed in chunks that never straddle a shard, so each finished shard records where
the corpus reader stood (line, byte offset, skipped-line count). After a crash the same command
reopens the directory, drops the shard that was in flight, seeks to the recorded byte offset and
goes on; since a shard's rows are always encoded in the same chunks, the directory ends up
byte-identical to an uninterrupted run. The shard set's metadata holds the model's and the corpus's
fingerprints: resuming with another model or an edited corpus is refused.

Memory: one chunk of texts and its embeddings (`chunk_rows` rows), the encoder's batches, plus the
set of ids seen so far for duplicate detection (about 70 bytes per passage: ~600 MB for MS MARCO).
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

from fastmarco._locks import output_lock
from fastmarco._pause import pause_if_asked
from fastmarco.encode.job import (
    DEFAULT_CHUNK_ROWS,
    LOCK_NAME,
    SKIPPED_NAME,
    STAGES,
    Cursor,
    EncodeSummary,
    JobSpec,
    OnBadLine,
    count_lines,
    encode_update,
    remove_shard_set,
)
from fastmarco.encode.reader import CorpusReader
from fastmarco.errors import StoreIOError
from fastmarco.model.encoder import Encoder
from fastmarco.progress import Progress
from fastmarco.store.shards import (
    DEFAULT_ROWS_PER_SHARD,
    MANIFEST_NAME,
    DType,
    Manifest,
    ShardSet,
    ShardWriter,
)

# Testing aid: pause (until killed) once this many rows are in finished shards (fastmarco._pause).
PAUSE_ENV = "FASTMARCO_DEBUG_PAUSE_AFTER_ROWS"


def encode_corpus(
    encoder: Encoder,
    corpus: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    dtype: DType = "fp16",
    on_bad_line: OnBadLine = "error",
    restart: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    format: str = "auto",
    progress: Progress | None = None,
) -> EncodeSummary:
    """Encode every passage of `corpus` into the shard directory `out` (see the module docstring).

    `progress` gets an `encode_update` after each chunk (rows of an estimated total, tokens, shards).
    """
    spec = JobSpec.create(
        encoder.directory,
        corpus,
        rows_per_shard=rows_per_shard,
        dtype=dtype,
        on_bad_line=on_bad_line,
        chunk_rows=chunk_rows,
        format=format,
        model=encoder.model,
    )
    return encode_job(encoder, spec, out, restart=restart, progress=progress)


def encode_job(
    encoder: Encoder,
    spec: JobSpec,
    out: str | os.PathLike[str],
    *,
    restart: bool = False,
    progress: Progress | None = None,
) -> EncodeSummary:
    """Run `spec` (all of its corpus, or its line range) into `out` with `encoder`; one writer at a time."""
    out_path = Path(out)
    with output_lock(out_path / LOCK_NAME, str(out_path)):
        return _encode_locked(encoder, spec, out_path, restart, progress)


def _encode_locked(
    encoder: Encoder, spec: JobSpec, out_path: Path, restart: bool, progress: Progress | None
) -> EncodeSummary:
    corpus_path = Path(spec.corpus)
    started = time.perf_counter()
    if restart and (out_path / MANIFEST_NAME).exists():
        remove_shard_set(out_path)
    writer: ShardWriter
    seen: set[Any] = set()
    if (out_path / MANIFEST_NAME).exists():
        existing = Manifest.load(out_path)
        spec.check_same_job(existing, out_path)
        if existing.complete:
            return EncodeSummary.of_complete(out_path, encoder.device)
        writer = ShardWriter.resume(out_path)
        if writer.manifest.shards:
            ids = ShardSet.open(out_path, allow_incomplete=True).ids()
            seen.update(ids.tolist())
    else:
        writer = ShardWriter(
            out_path,
            dim=encoder.dim,
            dtype=spec.dtype,
            rows_per_shard=spec.rows_per_shard,
            id_type=spec.id_type,
            metadata=spec.metadata(),
        )
    line_range = spec.line_range
    start_line, start_byte = (line_range.start_line, line_range.start_byte) if line_range else (0, 0)
    recorded = writer.last_cursor
    cursor = Cursor.from_json(recorded) if recorded else Cursor(start_line, start_byte)
    resumed_at = writer.manifest.rows

    skipped_path = out_path / SKIPPED_NAME
    skipped_file = None
    if spec.on_bad_line == "skip":
        with open(skipped_path, "a", encoding="utf-8"):
            pass
        os.truncate(skipped_path, cursor.skipped_bytes)  # lines of the shard in flight come again
        skipped_file = open(skipped_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in finally
    reader = CorpusReader(corpus_path, spec.reader(), spec.id_type, spec.on_bad_line, skipped_file, seen)
    reader.skipped = cursor.skipped
    lines_total = count_lines(corpus_path) if line_range is None else line_range.lines
    total_estimate = lines_total - reader.skipped
    truncated = tokens = 0
    stage_seconds = dict.fromkeys(STAGES, 0.0)
    try:
        pause_if_asked(PAUSE_ENV, resumed_at, "rows")
        stop_line = None if line_range is None else line_range.stop_line
        lines = reader.lines(cursor.byte, cursor.line, stop_line)
        while True:
            room = spec.rows_per_shard - (writer.rows - writer.manifest.rows)
            clock = time.perf_counter()
            chunk = [line for _, line in zip(range(min(spec.chunk_rows, room)), lines, strict=False)]
            stage_seconds["read"] += time.perf_counter() - clock
            if not chunk:
                break
            vectors, stats = encoder.encode_with_stats([line.text for line in chunk])
            truncated += stats.truncated
            tokens += stats.tokens
            stage_seconds["tokenize"] += stats.tokenize_seconds
            stage_seconds["infer"] += stats.infer_seconds
            if skipped_file is not None:
                skipped_file.flush()
                os.fsync(skipped_file.fileno())
            chunk_ids = (
                [int(line.pid) for line in chunk] if spec.id_type == "int" else [line.pid for line in chunk]
            )
            end = Cursor(
                chunk[-1].number,
                chunk[-1].end_byte,
                reader.skipped,
                skipped_path.stat().st_size if skipped_file is not None else 0,
            )
            clock = time.perf_counter()
            writer.add(vectors, chunk_ids, cursor=end.to_json())
            stage_seconds["write"] += time.perf_counter() - clock
            if progress is not None:
                progress(encode_update(writer.rows, total_estimate, tokens, len(writer.manifest.shards)))
            pause_if_asked(PAUSE_ENV, writer.manifest.rows, "rows")
        clock = time.perf_counter()
        writer.close()
        stage_seconds["write"] += time.perf_counter() - clock
    except OSError as exc:
        writer.abort()
        if exc.errno == errno.ENOSPC or "No space left" in str(exc):
            raise StoreIOError(
                f"{out_path}: disk full ({exc}); every finished shard is kept: free space and rerun the same "
                "command to resume"
            ) from exc
        raise
    except BaseException:
        writer.abort()
        raise
    finally:
        if skipped_file is not None:
            skipped_file.close()
    seconds = time.perf_counter() - started
    encoded = writer.manifest.rows - resumed_at
    return EncodeSummary(
        out=str(out_path),
        rows=writer.manifest.rows,
        shards=len(writer.manifest.shards),
        skipped=reader.skipped,
        truncated=truncated,
        tokens=tokens,
        seconds=seconds,
        passages_per_second=encoded / seconds if seconds > 0 else 0.0,
        resumed_at_row=resumed_at,
        device=encoder.device,
        stage_seconds=stage_seconds,
    )
