"""The JSON manifests (shard sets, indexes, index groups, models, mining jobs): one load path and one
save path. Loading turns a missing file, invalid JSON or a non-UTF-8 file into the caller's own error
class naming the file and line, checks the format and schema version, brings an older schema to the
current one by explicit migrations, and converts the body to the manifest's dataclass with msgspec
(types, ranges and enumerations come from the dataclass's annotations; an error names the field).
Saving writes the dataclass back, atomically."""

from __future__ import annotations

import json
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec

from fastmarco._atomic import write_bytes_atomic
from fastmarco.errors import FastmarcoError

T = TypeVar("T")
Count = Annotated[int, msgspec.Meta(ge=0)]  # a row, shard or byte count: an int, never negative
Positive = Annotated[int, msgspec.Meta(gt=0)]


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


def load_manifest(
    path: Path,
    record: type[T],
    error: type[FastmarcoError],
    *,
    format: str,
    version: int,
    migrations: Mapping[int, Migration] | None = None,
    missing: str,
    implicit: bool = False,
) -> T:
    """`path` read by `read_manifest` and converted to `record` (a dataclass; unknown fields ignored)."""
    body = read_manifest(
        path, error, format=format, version=version, migrations=migrations, missing=missing, implicit=implicit
    )
    return convert(body, record, path, error)


def convert(body: Any, record: type[T], path: Path, error: type[FastmarcoError]) -> T:
    """`body` as a `record`, strictly typed (no "1" for 1, no true for 1); a mismatch is `error`
    naming `path` and the field, e.g. "index.json: field 'rows' must be int, got str"."""
    try:
        return msgspec.convert(body, type=record, strict=True)
    except msgspec.ValidationError as exc:
        raise error(f"{path}: {_field_message(str(exc), record)}") from exc


def _field_message(message: str, record: type) -> str:
    """msgspec's "Expected `int`, got `str` - at `$.groups[0].rows`" said in this project's words."""
    text, _, where = message.partition(" - at `$")
    field = where.rstrip("`").lstrip(".")
    text = text.replace("`", "")
    if text.startswith("Object missing required field "):
        name = text.removeprefix("Object missing required field ")
        return f"field '{f'{field}.' if field else ''}{name}' is missing"
    if text.startswith("Expected "):
        text = "must be " + text.removeprefix("Expected ")
    elif text.startswith("Invalid enum value "):
        allowed = typing.get_args(typing.get_type_hints(record).get(field))
        text = f"must be one of {list(allowed)}, got {text.removeprefix('Invalid enum value ')}"
    return f"field '{field}' {text}" if field else text


def manifest_bytes(record: Any, *, format: str, version: int | None = None) -> bytes:
    """A manifest document: 'format' (and 'version' unless the record carries its own) first, then the
    record's fields in order; UTF-8 JSON, two-space indented."""
    head: dict[str, Any] = {"format": format} if version is None else {"format": format, "version": version}
    fields = record if isinstance(record, dict) else msgspec.to_builtins(record)
    return (json.dumps({**head, **fields}, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def save_manifest(path: Path, record: Any, *, format: str, version: int | None = None) -> None:
    """Write `manifest_bytes` over `path` atomically."""
    write_bytes_atomic(path, manifest_bytes(record, format=format, version=version))
