"""The corpus format registry: each format reads its files into checked `Record`s, the same way for
every caller (encode, the passage store, BM25, the demo), and names the file and line of a bad one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from fastmarco.errors import FormatError, InputError


@dataclass(frozen=True, slots=True)
class Record:
    """One passage (or query) of a corpus: its id exactly as written, its text, and a title where the
    format has one."""

    id: str
    text: str
    title: str | None = None


@dataclass(frozen=True, slots=True)
class Line:
    """One line of a corpus file: its number (1-based), its bytes [start, end) in the file, and either
    its record or why it is not one."""

    number: int
    start: int
    end: int
    record: Record | None
    problem: str | None

    def checked(self, path: str | os.PathLike[str]) -> Record:
        """The record, or a FormatError naming this line of `path`."""
        if self.record is None:
            raise FormatError(path, self.number, self.problem or "unreadable line")
        return self.record


class CorpusFormat(Protocol):
    name: str

    def lines(
        self, path: str | os.PathLike[str], *, what: str = "passage", start_byte: int = 0, start_line: int = 0
    ) -> Iterator[Line]:
        """Every line from `start_byte` (the start of line `start_line` + 1), each checked. A problem
        that makes the rest of the file unreadable raises FormatError; one line's problem is yielded."""
        ...


CORPUS_FORMATS: dict[str, CorpusFormat] = {}


def register(corpus_format: CorpusFormat) -> CorpusFormat:
    if corpus_format.name in CORPUS_FORMATS:
        raise ValueError(f"corpus format {corpus_format.name!r} is registered twice")
    CORPUS_FORMATS[corpus_format.name] = corpus_format
    return corpus_format


def corpus_format(name: str) -> CorpusFormat:
    try:
        return CORPUS_FORMATS[name]
    except KeyError:
        raise InputError(
            f"unknown corpus format {name!r}; known: {', '.join(sorted(CORPUS_FORMATS))}"
        ) from None


def read_records(
    path: str | os.PathLike[str], *, what: str = "passage", format: str = "msmarco-tsv"
) -> Iterator[Record]:
    """Every record of a file in order; the first bad line is a FormatError naming it."""
    for line in corpus_format(format).lines(path, what=what):
        yield line.checked(path)
