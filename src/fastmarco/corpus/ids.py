"""The one id rule of the project: an id is a string, and it is never renumbered or reinterpreted.

`007`, `7` and `0007` are three different passages. A corpus whose every id is a canonical integer
(ASCII decimal digits, no leading zero, within int64, as MS MARCO's are) may store its ids as int64,
because the decimal string of the stored number is then the id itself; one other id and the whole
corpus keeps its ids as strings. Everything that turns an id into a stored key or back goes through
here."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

INT64_MAX = 2**63 - 1
ABSENT_KEY = -1  # an integer key no canonical id maps to: what a non-canonical id looks up


def integer_key(ident: str) -> int | None:
    """The int64 that stands for `ident` when its decimal string is exactly `ident`, else None."""
    if not (ident.isascii() and ident.isdigit()) or (ident[0] == "0" and ident != "0") or len(ident) > 19:
        return None
    value = int(ident)
    return value if value <= INT64_MAX else None


def all_integer(idents: Iterable[str]) -> bool:
    """Whether every id may be stored as an integer key (an empty set may)."""
    return all(integer_key(ident) is not None for ident in idents)


def lookup_keys(idents: Sequence[str], integer: bool) -> npt.NDArray[Any]:
    """Keys to search a sorted id array with: int64 keys for integer storage, where an id that is not
    canonical gets ABSENT_KEY (it cannot be in such a store), else the strings themselves."""
    if not integer:
        return np.asarray(list(idents), dtype=object)
    keys = [integer_key(ident) for ident in idents]
    return np.asarray([ABSENT_KEY if key is None else key for key in keys], dtype=np.int64)
