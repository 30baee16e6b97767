"""Reading the JSON manifests (shard sets, indexes, models): one place that turns a missing file,
invalid JSON or a non-UTF-8 file into the caller's own error class, naming the file and line, checks
a manifest's format and schema version, and brings an older schema to the current one."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
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


Migration = Callable[[dict[str, Any]], dict[str, Any]]


def read_manifest(
    path: Path,
    error: type[FastmarcoError],
    *,
    format: str,
    version: int,
    migrations: Mapping[int, Migration] | None = None,
    missing: str,
    implicit: bool = False,
) -> dict[str, Any]:
    """A manifest's body at schema `version`: a JSON object whose 'format' is `format` and whose
    'version' is `version` or one `migrations` can bring to it (migrations[v] turns version v into
    v + 1, step by step). `implicit`: a manifest of the first schema may lack both fields."""
    body: dict[str, Any] = read_json_document(path, error, missing=missing)
    if not isinstance(body, dict) or body.get("format", format if implicit else None) != format:
        raise error(f"{path}: field 'format' must be '{format}'")
    steps = dict(migrations or {})
    found = body.get("version", version if implicit else None)
    readable = sorted({*steps, version})
    if type(found) is not int or found not in readable:
        shown = ", ".join(map(str, readable))
        raise error(f"{path}: field 'version' is {found!r}; this fastmarco reads {shown}")
    while found != version:
        body = steps[found](body)
        found += 1
    return body
