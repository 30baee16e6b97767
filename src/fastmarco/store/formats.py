"""Streaming readers and atomic writers for the MS MARCO file formats.

- collection.tsv / queries.tsv: ``id<TAB>text``, read by the registered corpus format
  (fastmarco.corpus.msmarco_tsv);
- qrels: ``qid iter pid grade`` whitespace separated (TREC ``qid Q0 pid grade`` and MS MARCO
  ``qid<TAB>0<TAB>pid<TAB>1`` alike);
- runs: MS MARCO ``qid<TAB>pid<TAB>rank`` or TREC ``qid Q0 pid rank score tag``.

Every malformed line raises FormatError naming the file and line; nothing is skipped. Lines are
split on b"\\n" only and decoded as strict UTF-8, so text round-trips byte for byte (the MS MARCO
collection's mojibake is valid UTF-8 and stays as it is). Ids are kept as strings, as trec_eval does.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from fastmarco._atomic import write_atomic
from fastmarco.corpus.formats import read_records
from fastmarco.corpus.msmarco_tsv import BOM, line_body
from fastmarco.errors import FormatError, InputError

RunFormat = Literal["msmarco", "trec"]
_READ_BUFFER = 1 << 20


class Judgement(NamedTuple):
    qid: str
    pid: str
    grade: int


class RunEntry(NamedTuple):
    qid: str
    pid: str
    rank: int
    score: float | None  # None in MS MARCO run files, which carry no score


def _lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
    """(line number, text without the trailing newline), strict UTF-8."""
    with open(path, "rb", buffering=_READ_BUFFER) as handle:
        for number, raw in enumerate(handle, 1):
            raw = line_body(path, number, raw)
            if raw.startswith(BOM):
                why = "byte order mark (U+FEFF) starting the line: two at the file's start, or one mid-file"
                raise FormatError(path, number, why)
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise FormatError(path, number, f"invalid UTF-8 at byte {exc.start} of the line") from exc


def read_collection(path: str | os.PathLike[str], *, format: str = "auto") -> Iterator[tuple[str, str]]:
    """Stream (pid, passage) pairs from a collection (its format detected unless named)."""
    return ((record.id, record.text) for record in read_records(path, what="passage", format=format))


def read_queries(path: str | os.PathLike[str]) -> Iterator[tuple[str, str]]:
    """Stream (qid, query) pairs from a queries.tsv."""
    return ((record.id, record.text) for record in read_records(path, what="query"))


def load_queries(path: str | os.PathLike[str]) -> dict[str, str]:
    """All queries of a file by qid; a repeated qid is an error."""
    queries: dict[str, str] = {}
    for number, (qid, text) in enumerate(read_queries(path), 1):
        if qid in queries:
            raise FormatError(path, number, f"duplicate query id {qid}")
        queries[qid] = text
    return queries


def _check_text_field(ident: str, text: str, what: str) -> None:
    if not ident or any(c in ident for c in "\t\n\r") or ident != ident.strip():
        raise InputError(f"{what} id {ident!r} must be non-empty, unpadded and free of tabs and newlines")
    if "\n" in text or not text.strip():
        raise InputError(f"{what} text of id {ident} must be non-empty and contain no newline")


def write_id_text(
    path: str | os.PathLike[str], pairs: Iterable[tuple[str, str]], what: str = "passage"
) -> int:
    """Atomically write (id, text) pairs as ``id<TAB>text`` lines; returns the line count."""
    count = 0

    def write(handle: BinaryIO) -> None:
        nonlocal count
        for ident, text in pairs:
            _check_text_field(str(ident), text, what)
            handle.write(f"{ident}\t{text}\n".encode())
            count += 1

    write_atomic(Path(path), write)
    return count


BEIR_QRELS_HEADER = ("query-id", "corpus-id", "score")


def read_qrels(path: str | os.PathLike[str]) -> Iterator[Judgement]:
    """Stream judgements from TREC (``qid Q0 pid grade``), MS MARCO (``qid 0 pid 1``) or BEIR qrels
    (``query-id<TAB>corpus-id<TAB>score`` with that header line), told apart by the first lines."""
    width = 0
    for number, line in _lines(path):
        fields = line.split()
        if number == 1 and tuple(f.lower() for f in fields) == BEIR_QRELS_HEADER:
            width = 3
            continue
        width = width or (3 if len(fields) == 3 else 4)
        if len(fields) != width:
            shape = "'query-id corpus-id score'" if width == 3 else "'qid iter pid grade'"
            raise FormatError(path, number, f"expected {width} fields {shape}, found {len(fields)}")
        try:
            grade = int(fields[-1])
        except ValueError:
            raise FormatError(path, number, f"grade {fields[-1]!r} is not an integer") from None
        yield Judgement(fields[0], fields[-2], grade)


def load_qrels(path: str | os.PathLike[str]) -> dict[str, dict[str, int]]:
    """qid -> {pid: grade}; the same pair judged twice with different grades is an error."""
    qrels: dict[str, dict[str, int]] = {}
    for number, (qid, pid, grade) in enumerate(read_qrels(path), 1):
        judged = qrels.setdefault(qid, {})
        if judged.get(pid, grade) != grade:
            raise FormatError(
                path, number, f"query {qid} passage {pid} judged {judged[pid]} before, now {grade}"
            )
        judged[pid] = grade
    if not qrels:
        raise FormatError(path, 1, "no judgements: the qrels file is empty")
    return qrels


def detect_run_format(path: str | os.PathLike[str]) -> RunFormat:
    """'msmarco' when the first line has 3 tab-separated fields, 'trec' when it has 6 fields."""
    for number, line in _lines(path):
        if len(line.split("\t")) == 3:
            return "msmarco"
        if len(line.split()) == 6:
            return "trec"
        raise FormatError(
            path, number, "not a run file: expected 'qid<TAB>pid<TAB>rank' or 'qid Q0 pid rank score tag'"
        )
    raise FormatError(path, 1, "empty run file")


def read_run(
    path: str | os.PathLike[str], format: RunFormat | Literal["auto"] = "auto"
) -> Iterator[RunEntry]:
    """Stream run entries in file order; `format="auto"` detects it from the first line."""
    run_format = detect_run_format(path) if format == "auto" else format
    expected = 3 if run_format == "msmarco" else 6
    for number, line in _lines(path):
        fields = line.split("\t") if run_format == "msmarco" else line.split()
        if len(fields) != expected:
            raise FormatError(
                path, number, f"expected {expected} fields of a {run_format} run, found {len(fields)}"
            )
        qid, pid, rank_text = (
            (fields[0], fields[1], fields[2]) if expected == 3 else (fields[0], fields[2], fields[3])
        )
        try:
            rank = int(rank_text)
        except ValueError:
            raise FormatError(path, number, f"rank {rank_text!r} is not an integer") from None
        score = None
        if run_format == "trec":
            try:
                score = float(fields[4])
            except ValueError:
                raise FormatError(path, number, f"score {fields[4]!r} is not a number") from None
            if not math.isfinite(score):
                raise FormatError(path, number, f"score {fields[4]!r} is not a finite number")
        yield RunEntry(qid, pid, rank, score)


def load_run(
    path: str | os.PathLike[str], format: RunFormat | Literal["auto"] = "auto"
) -> dict[str, list[RunEntry]]:
    """qid -> its entries in file order."""
    run: dict[str, list[RunEntry]] = {}
    for entry in read_run(path, format):
        run.setdefault(entry.qid, []).append(entry)
    return run


def write_run(
    path: str | os.PathLike[str], entries: Iterable[RunEntry], format: RunFormat, tag: str = "fastmarco"
) -> int:
    """Atomically write a run file; TREC lines need a score. Returns the line count."""
    if format not in ("msmarco", "trec"):
        raise InputError(f"format must be 'msmarco' or 'trec', got {format!r}")
    if not tag or any(c.isspace() for c in tag):
        raise InputError(f"run tag must be one word, got {tag!r}")
    count = 0

    def write(handle: BinaryIO) -> None:
        nonlocal count
        for entry in entries:
            if format == "msmarco":
                line = f"{entry.qid}\t{entry.pid}\t{entry.rank}\n"
            else:
                if entry.score is None:
                    raise InputError(f"TREC run entry for query {entry.qid} passage {entry.pid} has no score")
                line = f"{entry.qid} Q0 {entry.pid} {entry.rank} {entry.score!r} {tag}\n"
            handle.write(line.encode())
            count += 1

    write_atomic(Path(path), write)
    return count


@dataclass(frozen=True)
class RunColumns:
    """A whole run file as columns (file order): the fast path for evaluation."""

    qids: npt.NDArray[np.object_]
    pids: npt.NDArray[np.object_]
    ranks: npt.NDArray[np.int64]
    scores: npt.NDArray[np.float64] | None  # None for MS MARCO runs


def read_run_columns(
    path: str | os.PathLike[str], format: RunFormat | Literal["auto"] = "auto", block_bytes: int = 64 << 20
) -> RunColumns:
    """Load a run file column-wise, several times faster than `read_run`.

    Blocks are split into fields at once (no per-line objects) after NumPy checks that every line
    has the right field count. Any irregularity (bad UTF-8, a wrong field count, a non-numeric rank
    or score) makes it parse the file with `read_run`, which names the offending line.
    """
    run_format = detect_run_format(path) if format == "auto" else format
    width = 3 if run_format == "msmarco" else 6
    columns: list[list[str]] = [[] for _ in range(width)]
    try:
        with open(path, "rb") as handle:
            tail = b""
            first = True
            while block := handle.read(block_bytes):
                block = tail + (block.removeprefix(BOM) if first else block)
                if first and block.startswith(BOM):
                    raise ValueError("a second byte order mark")  # the strict parser names the line
                first = False
                cut = block.rfind(b"\n") + 1
                tail = block[cut:]
                _split_block(block[:cut], run_format, width, columns)
            if tail:
                _split_block(tail + b"\n", run_format, width, columns)
        ranks = np.array(columns[2 if width == 3 else 3], dtype=np.int64)
        scores = np.array(columns[4], dtype=np.float64) if width == 6 else None
        if scores is not None and not np.isfinite(scores).all():
            raise ValueError("non-finite score")
    except (UnicodeDecodeError, ValueError):
        # the strict line-by-line parser raises a FormatError naming the line, or parses it correctly
        return columns_from_entries(list(read_run(path, run_format)))
    return RunColumns(
        np.array(columns[0], dtype=object),
        np.array(columns[1 if width == 3 else 2], dtype=object),
        ranks,
        scores,
    )


def _split_block(block: bytes, run_format: RunFormat, width: int, columns: list[list[str]]) -> None:
    """Append the fields of whole lines; ValueError unless every line has exactly `width` fields."""
    if not block:
        return
    raw = np.frombuffer(block, dtype=np.uint8)
    line_ends = np.flatnonzero(raw == 10)
    if run_format == "msmarco":  # fields are separated by exactly one tab
        separators = np.flatnonzero(raw == 9)
        per_line = np.diff(np.searchsorted(separators, line_ends), prepend=0) + 1
        fields = block.decode("utf-8").replace("\n", "\t").split("\t")[:-1]
    else:  # whitespace separated: count the starts of non-space runs
        space = (raw == 32) | (raw == 9) | (raw == 10) | (raw == 13) | (raw == 11) | (raw == 12)
        starts = np.flatnonzero(~space & np.concatenate(([True], space[:-1])))
        per_line = np.diff(np.searchsorted(starts, line_ends), prepend=0)
        fields = block.decode("utf-8").split()
    if (per_line != width).any() or len(fields) != width * len(line_ends):
        raise ValueError("field count")
    for i, column in enumerate(columns):
        column.extend(fields[i::width])


def columns_from_entries(entries: list[RunEntry]) -> RunColumns:
    """Columns of already parsed entries; scores are kept only when every entry has one."""
    scored = bool(entries) and all(e.score is not None for e in entries)
    return RunColumns(
        np.array([e.qid for e in entries], dtype=object),
        np.array([e.pid for e in entries], dtype=object),
        np.array([e.rank for e in entries], dtype=np.int64),
        np.array([e.score for e in entries], dtype=np.float64) if scored else None,
    )
