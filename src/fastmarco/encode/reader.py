"""Reading collection.tsv for an encode: checked lines from a byte offset, and cutting the corpus
into contiguous parts at shard boundaries for several workers."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from fastmarco.corpus.formats import CorpusFormat
from fastmarco.encode.job import LineRange, OnBadLine, count_lines
from fastmarco.errors import FormatError


@dataclass
class CorpusLine:
    number: int
    end_byte: int
    pid: str
    text: str


class CorpusReader:
    """Lines of a collection.tsv from a byte offset, each checked; bad ones raise or go to a side file."""

    def __init__(
        self,
        path: Path,
        corpus_format: CorpusFormat,
        id_type: str,
        on_bad_line: OnBadLine,
        skipped: TextIO | None,
        seen: set[Any],
    ) -> None:
        self.path = path
        self.format = corpus_format
        self.id_type = id_type
        self.on_bad_line = on_bad_line
        self.skipped_file = skipped
        self.skipped = 0
        self.seen = seen

    def problem(self, pid: str) -> str | None:
        """A well-formed line's id seen before. Integer storage was chosen because every id of the
        corpus is a canonical integer (encode.job.detect_id_type), so int(pid) is that id."""
        key = int(pid) if self.id_type == "int" else pid
        if key in self.seen:
            return f"duplicate id {pid}"
        self.seen.add(key)
        return None

    def lines(self, start_byte: int, start_line: int, stop_line: int | None = None) -> Iterator[CorpusLine]:
        with open(self.path, "rb") as handle:
            for line in self.format.lines(self.path, start_byte=start_byte, start_line=start_line):
                if line.number - 1 == stop_line:
                    return
                reason = line.problem if line.record is None else self.problem(line.record.id)
                if line.record is not None and reason is None:
                    yield CorpusLine(line.number, line.end, line.record.id, line.record.text)
                    continue
                if self.on_bad_line == "error" or self.skipped_file is None:
                    raise FormatError(self.path, line.number, reason or "unreadable line")
                self.skipped += 1
                handle.seek(line.start)
                body = handle.read(line.end - line.start).rstrip(b"\n")
                shown = body.decode("utf-8", errors="backslashreplace").replace("\t", "\\t")
                self.skipped_file.write(f"{line.number}\t{reason}\t{shown}\n")


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
