"""Reading the JSON manifests (shard sets, indexes, models): one place that turns a missing file,
invalid JSON or a non-UTF-8 file into the caller's own error class, naming the file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastmarco.errors import FastmarcoError


def read_json_document(path: Path, error: type[FastmarcoError], *, missing: str) -> Any:
    """The parsed document (callers check that it is an object of their format); `missing` says what to do
    when the file is absent."""
    if not path.is_file():
        raise error(f"{path}: not found; {missing}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise error(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from exc


def read_field(
    body: dict[str, Any],
    path: Path,
    error: type[FastmarcoError],
    name: str,
    kind: type,
    *,
    default: Any = None,
    optional: bool = False,
) -> Any:
    """Field `name` of a manifest `body`, of type `kind` (a bool is no int) and, if an int, not negative;
    `optional` lets it be null or absent (None), `default` stands in for an absent one."""
    value = body.get(name, default)
    if optional and value is None:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise error(f"{path}: field '{name}' must be {kind.__name__}, got {value!r}")
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        raise error(f"{path}: field '{name}' must not be negative, got {value}")
    return value
