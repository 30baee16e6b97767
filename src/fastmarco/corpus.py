"""`fastmarco encode`: a whole collection.tsv to embedding shards, bounded and resumable.

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

import json
import mmap
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

from fastmarco import _native
from fastmarco.encoder import Encoder
from fastmarco.formats import FormatError
from fastmarco.shards import MANIFEST_NAME, DType, IdType, Manifest, ShardSet, ShardWriter

OnBadLine = Literal["error", "skip"]
SKIPPED_NAME = "skipped-lines.tsv"
DEFAULT_CHUNK_ROWS = 16_384


class EncodeMismatchError(ValueError):
    """The shard directory belongs to another model or corpus (or other settings)."""


@dataclass
class EncodeSummary:
    out: str
    rows: int
    shards: int
    skipped: int
    truncated: int
    tokens: int
    seconds: float
    passages_per_second: float
    resumed_at_row: int
    device: str

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def of_complete(cls, out: Path, device: str) -> EncodeSummary:
        """What a rerun over an already finished directory reports (after checking its shards are
        whole): nothing encoded this time."""
        done = ShardSet.open(out)
        rows = len(done)
        return cls(str(out), rows, len(done.files), _skipped_count(out), 0, 0, 0.0, 0.0, rows, device)


def corpus_fingerprint(path: Path) -> str:
    """Size and XXH3-64 of the whole file: an edited corpus cannot pass for the original."""
    size = path.stat().st_size
    if size == 0:
        return "0:0"
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
        return f"{size}:{_native.checksum(view):016x}"


def count_lines(path: Path) -> int:
    lines = 0
    last = b"\n"
    with open(path, "rb") as handle:
        while block := handle.read(16 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")


@dataclass(frozen=True)
class LineRange:
    """Corpus lines start_line+1 .. stop_line (1-based), the first at byte start_byte: one worker's part."""

    start_line: int
    start_byte: int
    stop_line: int


@dataclass
class _Line:
    number: int
    end_byte: int
    pid: str
    text: str


class _CorpusReader:
    """Lines of a collection.tsv from a byte offset, each checked; bad ones raise or go to a side file."""

    def __init__(
        self, path: Path, id_type: str, on_bad_line: OnBadLine, skipped: TextIO | None, seen: set[Any]
    ) -> None:
        self.path = path
        self.id_type = id_type
        self.on_bad_line = on_bad_line
        self.skipped_file = skipped
        self.skipped = 0
        self.seen = seen

    def problem(self, pid: str, text: str | None) -> str | None:
        if text is None:
            return "no tab between id and passage"
        if not pid or pid != pid.strip():
            return f"empty or space-padded id {pid!r}"
        if not text.strip():
            return f"empty passage for id {pid}"
        if self.id_type == "int" and not (pid.isascii() and pid.isdigit()):
            return f"id {pid!r} is not an integer like the corpus's other ids"
        key = int(pid) if self.id_type == "int" else pid
        if key in self.seen:
            return f"duplicate id {pid}"
        self.seen.add(key)
        return None

    def lines(self, start_byte: int, start_line: int, stop_line: int | None = None) -> Iterator[_Line]:
        with open(self.path, "rb") as handle:
            handle.seek(start_byte)
            offset, number = start_byte, start_line
            for raw in handle:
                if number == stop_line:
                    return
                number += 1
                offset += len(raw)
                body = raw[:-1] if raw.endswith(b"\n") else raw
                try:
                    line = body.decode("utf-8")
                    pid, tab, text = line.partition("\t")
                    reason = self.problem(pid, text if tab else None)
                except UnicodeDecodeError as exc:
                    pid, text, reason = "", "", f"invalid UTF-8 at byte {exc.start} of the line"
                if reason is None:
                    yield _Line(number, offset, pid, text)
                    continue
                if self.on_bad_line == "error" or self.skipped_file is None:
                    raise FormatError(self.path, number, reason)
                self.skipped += 1
                shown = body.decode("utf-8", errors="backslashreplace").replace("\t", "\\t")
                self.skipped_file.write(f"{number}\t{reason}\t{shown}\n")


def job_metadata(
    model_directory: Path,
    model_manifest: dict[str, Any],
    corpus: Path,
    dtype: DType,
    id_type: str,
    chunk_rows: int,
) -> dict[str, Any]:
    """What a shard directory records about the job that wrote it; a resume must match it exactly."""
    return {
        "model": {
            "directory": str(model_directory.resolve()),
            "fingerprint": str(model_manifest["fingerprint"]),
            "dim": int(model_manifest["dim"]),
            "similarity": model_manifest.get("similarity"),
            "search_metric": model_manifest.get("search_metric", "ip"),
            "precision": model_manifest.get("precision"),
        },
        "corpus": {"name": corpus.name, "fingerprint": corpus_fingerprint(corpus)},
        "encode": {"dtype": dtype, "id_type": id_type, "chunk_rows": chunk_rows},
    }


def check_same_job(existing: Manifest, wanted: dict[str, Any], out: Path, rows_per_shard: int) -> None:
    have = existing.metadata
    problems = []
    if have.get("model", {}).get("fingerprint") != wanted["model"]["fingerprint"]:
        problems.append("was written with another model (fingerprints differ)")
    if have.get("corpus", {}).get("fingerprint") != wanted["corpus"]["fingerprint"]:
        problems.append("was written from another corpus, or the corpus changed since")
    if have.get("encode") != wanted["encode"] or existing.rows_per_shard != rows_per_shard:
        problems.append(
            f"was written with other settings ({have.get('encode')}, {existing.rows_per_shard} rows/shard)"
        )
    if problems:
        raise EncodeMismatchError(f"{out}: " + "; ".join(problems) + "; pass --restart to start over")


def remove_shard_set(out: Path) -> None:
    for path in out.iterdir():
        if path.name.startswith(("vectors-", "ids-", MANIFEST_NAME, SKIPPED_NAME)):
            path.unlink() if path.is_file() else shutil.rmtree(path)


def detect_id_type(corpus: Path) -> IdType:
    with open(corpus, "rb") as handle:
        first = handle.readline().split(b"\t", 1)[0]
    return "int" if first.isdigit() else "str"


def encode_corpus(
    encoder: Encoder,
    corpus: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    rows_per_shard: int = 1_000_000,
    dtype: DType = "fp16",
    on_bad_line: OnBadLine = "error",
    restart: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Callable[[int, int, int, int], None] | None = None,
    line_range: LineRange | None = None,
) -> EncodeSummary:
    """Encode every passage of `corpus` into the shard directory `out` (see the module docstring).

    progress(rows_done, rows_total_estimate, tokens_done, shard_index) is called after each chunk.
    line_range encodes only those lines (one part of a multi-device run; see fastmarco.multi_device).
    """
    corpus_path, out_path = Path(corpus), Path(out)
    if not corpus_path.is_file():
        raise FileNotFoundError(f"{corpus_path}: corpus not found")
    id_type = detect_id_type(corpus_path)
    wanted = job_metadata(encoder.directory, encoder.manifest, corpus_path, dtype, id_type, chunk_rows)
    if line_range is not None:
        wanted["encode"]["lines"] = [line_range.start_line, line_range.stop_line]
    started = time.perf_counter()

    if restart and (out_path / MANIFEST_NAME).exists():
        remove_shard_set(out_path)
    writer: ShardWriter
    seen: set[Any] = set()
    if (out_path / MANIFEST_NAME).exists():
        existing = Manifest.load(out_path)
        check_same_job(existing, wanted, out_path, rows_per_shard)
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
            dtype=dtype,
            rows_per_shard=rows_per_shard,
            id_type=id_type,
            metadata=wanted,
        )
    start_line, start_byte = (line_range.start_line, line_range.start_byte) if line_range else (0, 0)
    cursor = writer.last_cursor or {"line": start_line, "byte": start_byte, "skipped": 0, "skipped_bytes": 0}
    resumed_at = writer.manifest.rows

    skipped_path = out_path / SKIPPED_NAME
    skipped_file = None
    if on_bad_line == "skip":
        with open(skipped_path, "a", encoding="utf-8"):
            pass
        os.truncate(skipped_path, int(cursor["skipped_bytes"]))  # lines of the shard in flight come again
        skipped_file = open(skipped_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in finally
    reader = _CorpusReader(corpus_path, id_type, on_bad_line, skipped_file, seen)
    reader.skipped = int(cursor["skipped"])
    lines_total = (
        count_lines(corpus_path) if line_range is None else line_range.stop_line - line_range.start_line
    )
    total_estimate = lines_total - reader.skipped
    truncated = tokens = 0
    try:
        stop_line = None if line_range is None else line_range.stop_line
        lines = reader.lines(int(cursor["byte"]), int(cursor["line"]), stop_line)
        while True:
            room = rows_per_shard - (writer.rows - writer.manifest.rows)
            chunk = [line for _, line in zip(range(min(chunk_rows, room)), lines, strict=False)]
            if not chunk:
                break
            vectors, stats = encoder.encode_with_stats([line.text for line in chunk])
            truncated += stats.truncated
            tokens += stats.tokens
            if skipped_file is not None:
                skipped_file.flush()
                os.fsync(skipped_file.fileno())
            chunk_ids = (
                [int(line.pid) for line in chunk] if id_type == "int" else [line.pid for line in chunk]
            )
            end = {
                "line": chunk[-1].number,
                "byte": chunk[-1].end_byte,
                "skipped": reader.skipped,
                "skipped_bytes": skipped_path.stat().st_size if skipped_file is not None else 0,
            }
            writer.add(vectors, chunk_ids, cursor=end)
            if progress is not None:
                progress(writer.rows, total_estimate, tokens, len(writer.manifest.shards))
        writer.close()
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
    )


def _skipped_count(out: Path) -> int:
    path = out / SKIPPED_NAME
    if not path.is_file():
        return 0
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


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
