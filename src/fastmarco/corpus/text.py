"""Checks on text before it reaches a tokenizer."""

from __future__ import annotations


def unicode_problem(text: str) -> str | None:
    """Why `text` cannot be encoded as UTF-8 (a lone surrogate, as JSON's "\\ud800" decodes to), or
    None: the tokenizers take only valid Unicode and fail with a bare TypeError otherwise."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"not valid Unicode: a lone surrogate ({text[exc.start]!a}) at character {exc.start}"
    return None
