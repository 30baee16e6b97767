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

    def sniff(self, head: bytes) -> bool:
        """Whether a file starting with `head` (its first bytes, a byte order mark removed) is in this
        format; the default format (MS MARCO TSV) is what no other format claims."""
        ...

    def parse(self, body: bytes, what: str) -> Record | str:
        """The record of one line's bytes (no newline), or what is wrong with them."""
        ...

    def text_if(self, body: bytes, ident: str) -> str | None:
        """The text of the line `body` (no newline) when its id is `ident`, else None: the passage
        store's check that the line at a remembered offset is still the one it remembers."""
        ...

    def lines(
        self, path: str | os.PathLike[str], *, what: str = "passage", start_byte: int = 0, start_line: int = 0
    ) -> Iterator[Line]:
        """Every line from `start_byte` (the start of line `start_line` + 1), each checked. A problem
        that makes the rest of the file unreadable raises FormatError; one line's problem is yielded."""
        ...

    def ids(self, path: str | os.PathLike[str]) -> Iterator[str]:
        """The id of every line that has one, fast (for choosing how ids are stored); lines are
        judged properly when read."""
        ...


CORPUS_FORMATS: dict[str, CorpusFormat] = {}
DEFAULT_FORMAT = "msmarco-tsv"
_SNIFF_BYTES = 4096


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


def format_choices() -> list[str]:
    """What a `--format` option accepts: "auto" (detect from the file) or a registered format."""
    return ["auto", *sorted(CORPUS_FORMATS)]


def detect(path: str | os.PathLike[str], format: str = "auto") -> CorpusFormat:
    """The format `format` names, or for "auto" the one the file's first bytes show (the default
    where no other format claims them)."""
    if format != "auto":
        return corpus_format(format)
    with open(path, "rb") as handle:
        head = handle.read(_SNIFF_BYTES).removeprefix(b"\xef\xbb\xbf")
    claimed = [f for name, f in CORPUS_FORMATS.items() if name != DEFAULT_FORMAT and f.sniff(head)]
    return claimed[0] if claimed else CORPUS_FORMATS[DEFAULT_FORMAT]


def read_records(
    path: str | os.PathLike[str], *, what: str = "passage", format: str = "auto"
) -> Iterator[Record]:
    """Every record of a file in order; the first bad line is a FormatError naming it."""
    for line in detect(path, format).lines(path, what=what):
        yield line.checked(path)
