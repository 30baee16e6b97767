"""One error hierarchy: every failure fastmarco expects (bad input, corrupt or mismatched files, a
runtime that cannot run as asked) is a `FastmarcoError` whose message names the file and line or the
field at fault. The CLI (and the server) print these as one line; anything else is a bug.

Each class also derives from the built-in exception callers already catch (ValueError for bad data,
OSError for I/O, RuntimeError for a runtime that cannot run), so `except ValueError` keeps working.
The native core's C++ exceptions are translated into the classes below (see csrc/bindings.cpp).
"""

from __future__ import annotations

import os


class FastmarcoError(Exception):
    """Base of every error fastmarco raises on purpose."""


class InputError(FastmarcoError, ValueError):
    """A caller's argument is invalid (k <= 0, a wrong shape, an unknown option value)."""


class FieldError(InputError):
    """A request field is missing or wrong; `field` names it (``input``, ``k``, ``input[3]``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class PayloadTooLargeError(InputError):
    """A request is over a size limit (body bytes, inputs per request); the message names the limit and
    `field` the part of the request over it (``body``, ``input``, ``queries``)."""

    def __init__(self, message: str, field: str = "body") -> None:
        super().__init__(message)
        self.field = field


class FormatError(InputError):
    """A malformed line in an input file; the message starts with ``path:line:``."""

    def __init__(self, path: str | os.PathLike[str], line: int, message: str) -> None:
        super().__init__(f"{os.fspath(path)}:{line}: {message}")
        self.path = os.fspath(path)
        self.line = line


class ManifestError(FastmarcoError, ValueError):
    """A JSON manifest (shards, index, model) is missing, unreadable or has a bad field."""


class ShardFormatError(FastmarcoError, ValueError):
    """A shard file or shard directory is structurally wrong (magic, version, size, dim, rows)."""


class ShardChecksumError(ShardFormatError):
    """A file does not hash to the checksum its header or manifest records: it is corrupt."""


class StoreIOError(FastmarcoError, OSError):
    """A file of a shard set or index cannot be opened, read, mapped or written."""


class OutputExistsError(FastmarcoError, FileExistsError):
    """The output path exists and overwriting was not asked for."""


class BusyError(FastmarcoError, RuntimeError):
    """Another process is writing the same output (it holds the output's lock)."""


class OverloadedError(FastmarcoError, RuntimeError):
    """The server's queue is full: retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UnauthorizedError(FastmarcoError, PermissionError):
    """A request without the server's API key (or with another one)."""


class RequestTimeoutError(InputError):
    """A request body that did not arrive in time (a client trickling it, holding a connection)."""


class UnsupportedMediaError(InputError):
    """A request body that is not JSON by its Content-Type (a browser form posted across sites)."""


class MisdirectedError(FastmarcoError, PermissionError):
    """A request whose Host header names another server than this one (DNS rebinding)."""


class MismatchError(FastmarcoError, ValueError):
    """Two artefacts do not belong together (shards and index, model and shards, job and directory)."""


class EncodeMismatchError(MismatchError):
    """The shard directory belongs to another model or corpus (or other settings)."""


class IndexMismatchError(MismatchError):
    """The index does not belong to this shard set or model."""


class ModelError(FastmarcoError, ValueError):
    """A model directory cannot be exported or opened as asked; the message says what is supported."""


class ExportError(ModelError):
    """The model cannot be exported as asked."""


class EncoderError(FastmarcoError, RuntimeError):
    """The encoder cannot run as asked (missing provider, bad model directory)."""


class WorkerError(FastmarcoError, RuntimeError):
    """A worker process failed; the message names the worker, its device and its error."""


__all__ = [
    "BusyError",
    "EncodeMismatchError",
    "EncoderError",
    "ExportError",
    "FastmarcoError",
    "FieldError",
    "FormatError",
    "IndexMismatchError",
    "InputError",
    "ManifestError",
    "MismatchError",
    "ModelError",
    "OutputExistsError",
    "OverloadedError",
    "PayloadTooLargeError",
    "ShardChecksumError",
    "ShardFormatError",
    "StoreIOError",
    "UnauthorizedError",
    "WorkerError",
]
