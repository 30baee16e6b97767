"""MS MARCO TSV (collection.tsv, queries.tsv): ``id<TAB>text``, the text being everything after the
first tab. Lines are split on b"\\n" only and decoded as strict UTF-8, so text round-trips byte for
byte (the collection's mojibake is valid UTF-8 and stays as it is)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from fastmarco.corpus.formats import Line, Record, register
from fastmarco.errors import FormatError

BOM = b"\xef\xbb\xbf"
_READ_BUFFER = 1 << 20


def line_body(path: str | os.PathLike[str], number: int, raw: bytes) -> bytes:
    """A raw line without its newline, and without a UTF-8 byte order mark on line 1 (as Python's
    utf-8-sig and pandas read it). A carriage return left inside the line means CR-only line endings
    (the whole file would read as one line) or a stray CR: refused, naming the line. CRLF is fine."""
    body = raw[:-1] if raw.endswith(b"\n") else raw
    if number == 1:
        body = body.removeprefix(BOM)
    if b"\r" in body.rstrip(b"\r"):
        raise FormatError(
            path,
            number,
            "carriage return (CR, \\r) inside the line: the file uses CR line endings or holds a stray CR; "
            "lines must end in LF (\\n) or CRLF",
        )
    return body


def parse(body: bytes, what: str) -> Record | str:
    """The record of one line's bytes, or what is wrong with them."""
    try:
        line = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"invalid UTF-8 at byte {exc.start} of the line"
    ident, tab, text = line.partition("\t")
    if not tab:
        return f"expected '<id><TAB><{what}>', found no tab"
    if not ident.strip() or ident != ident.strip():
        return f"empty or space-padded id {ident!r}"
    if "\ufeff" in ident:  # a second byte order mark (one at the start of the file is dropped)
        return f"byte order mark (U+FEFF) in the id {ident!r}: two at the file's start, or one mid-file"
    if not text.strip():
        return f"empty {what} for id {ident}"
    return Record(ident, text)


def checked_lines(
    path: str | os.PathLike[str],
    parse_body: Callable[[bytes, str], Record | str],
    what: str,
    start_byte: int = 0,
    start_line: int = 0,
) -> Iterator[Line]:
    """Every line of a line-per-record file from `start_byte` (the start of line `start_line` + 1), its
    body (see `line_body`) parsed by `parse_body`: the line-splitting every such format shares."""
    with open(path, "rb", buffering=_READ_BUFFER) as handle:
        handle.seek(start_byte)
        offset = start_byte
        for number, raw in enumerate(handle, start_line + 1):
            start = offset + (len(BOM) if number == 1 and raw.startswith(BOM) else 0)
            offset += len(raw)
            parsed = parse_body(line_body(path, number, raw), what)
            if isinstance(parsed, Record):
                yield Line(number, start, offset, parsed, None)
            else:
                yield Line(number, start, offset, None, parsed)


class MsMarcoTsv:
    name = "msmarco-tsv"

    def sniff(self, head: bytes) -> bool:
        """Never claims a file: the default, chosen where no other format does."""
        return False

    def parse(self, body: bytes, what: str) -> Record | str:
        return parse(body, what)

    def text_if(self, body: bytes, ident: str) -> str | None:
        # compared as bytes, the text decoded only when it is the one (the store's hot path)
        found, _, text = body.partition(b"\t")
        return text.decode("utf-8") if found == ident.encode("utf-8") else None

    def ids(self, path: str | os.PathLike[str]) -> Iterator[str]:
        with open(path, "rb", buffering=_READ_BUFFER) as handle:
            for number, raw in enumerate(handle, 1):
                head, tab, _ = (raw.removeprefix(BOM) if number == 1 else raw).partition(b"\t")
                if tab:
                    yield head.decode("latin-1")

    def lines(
        self, path: str | os.PathLike[str], *, what: str = "passage", start_byte: int = 0, start_line: int = 0
    ) -> Iterator[Line]:
        return checked_lines(path, parse, what, start_byte, start_line)


register(MsMarcoTsv())
