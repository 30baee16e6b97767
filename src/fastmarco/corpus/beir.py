"""BEIR's JSON Lines corpora and queries (`corpus.jsonl`: ``{"_id", "title", "text"}``;
`queries.jsonl`: ``{"_id", "text"}``, other keys such as ``metadata`` ignored).

Ids are kept exactly as written (a JSON number id, which some conversions produce, is kept as its
decimal spelling). Format "beir" gives a model the title joined to the text as BEIR and
sentence-transformers do, ``(title + " " + text).strip()``; "beir-text" gives the text alone. A
line is one JSON object; lines are split on b"\\n" as in MS MARCO TSV, so byte offsets, resuming and
the passage store work the same way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

from fastmarco.corpus.formats import Line, Record, register
from fastmarco.corpus.msmarco_tsv import checked_lines


class BeirJsonl:
    def __init__(self, name: str, join_title: bool) -> None:
        self.name = name
        self.join_title = join_title

    def sniff(self, head: bytes) -> bool:
        return self.join_title and head.lstrip(b" \t\r\n").startswith(b"{")

    def parse(self, body: bytes, what: str) -> Record | str:
        try:
            value = json.loads(body)
        except UnicodeDecodeError as exc:
            return f"invalid UTF-8 at byte {exc.start} of the line"
        except ValueError as exc:
            return f"not a JSON object: {exc}"
        if not isinstance(value, dict):
            return f"expected a JSON object with _id and text, found {type(value).__name__}"
        ident = value.get("_id")
        if isinstance(ident, int) and not isinstance(ident, bool):
            ident = str(ident)
        if not isinstance(ident, str) or not ident.strip() or ident != ident.strip():
            return f"_id must be a non-empty, unpadded string, found {ident!r}"
        if any(c in ident for c in "\t\n\r"):
            return f"_id {ident!r} holds a tab or a newline"
        text, title = value.get("text", ""), value.get("title") or ""
        if not isinstance(text, str) or not isinstance(title, str):
            return f"text and title of _id {ident} must be strings"
        joined = (title + " " + text).strip() if self.join_title else text
        if not joined.strip():
            return f"empty {what} for _id {ident}"
        return Record(ident, joined, title or None)

    def text_if(self, body: bytes, ident: str) -> str | None:
        record = self.parse(body.rstrip(b"\r"), "passage")
        return record.text if isinstance(record, Record) and record.id == ident else None

    def lines(
        self, path: str | os.PathLike[str], *, what: str = "passage", start_byte: int = 0, start_line: int = 0
    ) -> Iterator[Line]:
        return checked_lines(path, self.parse, what, start_byte, start_line)

    def ids(self, path: str | os.PathLike[str]) -> Iterator[str]:
        for line in self.lines(path):
            if line.record is not None:
                yield line.record.id


register(BeirJsonl("beir", join_title=True))
register(BeirJsonl("beir-text", join_title=False))
