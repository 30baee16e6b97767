"""Shard directories: embedding shard files + per-shard id files + a JSON manifest.

Layout of a directory::

    manifest.json           format, dim, dtype, id type, metadata, the shards in order
    vectors-00000.fms       native shard file (see csrc/shard_file.hpp)
    ids-00000.npy | .txt    one id per row: int64 .npy, or UTF-8 text one id per line

Every file is published atomically (temporary name, fsync, rename). The manifest is rewritten
after each finished shard, so after a crash it lists exactly the whole shards; `complete` turns
true only when the writer is closed. Files not listed in the manifest are ignored.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from fastmarco import _native, fingerprints
from fastmarco._atomic import write_bytes_atomic
from fastmarco._json import Count, Positive, load_manifest, manifest_bytes
from fastmarco.corpus.ids import lookup_keys
from fastmarco.errors import InputError, ShardChecksumError, ShardFormatError
from fastmarco.progress import Progress, Update

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "fastmarco-shards"
MANIFEST_VERSION = 1
DEFAULT_ROWS_PER_SHARD = 1_000_000
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

DType = Literal["fp16", "fp32"]
IdType = Literal["int", "str"]
Verify = Literal["size", "checksum"]
_NUMPY_DTYPES: dict[str, type[np.floating[Any]]] = {"fp16": np.float16, "fp32": np.float32}


@dataclass(frozen=True)
class ShardEntry:
    """One manifest entry: a shard file, its id file, row count and checksums (hex XXH3-64)."""

    vectors: str
    ids: str
    rows: Count
    checksum: str
    ids_checksum: str
    cursor: dict[str, Any] | None = None  # where the producer stands after this shard (for resuming)


@dataclass
class Manifest:
    """`manifest.json`: the shard set's shape and its shards in order (`complete` once the writer closed)."""

    dim: Positive
    dtype: DType
    id_type: IdType
    rows_per_shard: Positive
    metadata: dict[str, Any] = field(default_factory=dict)
    shards: list[ShardEntry] = field(default_factory=list)
    complete: bool = False

    @property
    def rows(self) -> int:
        return sum(entry.rows for entry in self.shards)

    def __post_init__(self) -> None:
        suffix = ".npy" if self.id_type == "int" else ".txt"
        for position, entry in enumerate(self.shards):
            if not entry.ids.endswith(suffix):
                raise ValueError(
                    f"field 'shards[{position}].ids' is {entry.ids!r}, but {self.id_type} ids live in "
                    f"'{suffix}' files (field 'id_type')"
                )

    def to_json(self) -> bytes:
        fields = msgspec.to_builtins(self)
        shape = {name: fields[name] for name in ("dim", "dtype", "id_type", "rows_per_shard")}
        document = {**shape, "rows": self.rows, "complete": self.complete, **fields}
        return manifest_bytes(document, format=MANIFEST_FORMAT, version=MANIFEST_VERSION)

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        return load_manifest(
            directory / MANIFEST_NAME,
            cls,
            ShardFormatError,
            format=MANIFEST_FORMAT,
            version=MANIFEST_VERSION,
            missing=f"'{directory}' is not a fastmarco shard directory",
        )

    def save(self, directory: Path) -> None:
        write_bytes_atomic(directory / MANIFEST_NAME, self.to_json())


def _hex(value: int) -> str:
    return f"{value:016x}"


def _validate_str_ids(ids: Sequence[Any] | npt.NDArray[Any], first_row: int) -> list[str]:
    out = []
    for offset, value in enumerate(ids):
        if not isinstance(value, str) or not value or any(c in value for c in "\n\r\t"):
            raise InputError(
                f"id of row {first_row + offset} must be a non-empty str"
                f" without tabs or newlines, got {value!r}"
            )
        out.append(value)
    return out


class _TakenIds:
    """The ids a writer has taken, so that it refuses a second of any (an index over a repeated id
    would return it twice). Integer ids in [0, 2**31) live in a bitmap (MS MARCO's 8.8M pids: 1.1 MB,
    not the ~600 MB of a set); other ids, and every str id, in a set."""

    BITMAP_LIMIT = 1 << 31

    def __init__(self) -> None:
        self.bits = np.zeros(0, dtype=np.uint8)
        self.others: set[Any] = set()

    def take(self, ids: npt.NDArray[np.int64] | list[str], first_row: int) -> None:
        """Add `ids`, or raise InputError naming the first one already taken (or repeated among them)
        and add none."""
        if isinstance(ids, np.ndarray):
            self._take_ints(ids, first_row)
            return
        batch: set[str] = set()
        for offset, value in enumerate(ids):
            if value in self.others or value in batch:
                raise _repeated(value, first_row + offset)
            batch.add(value)
        self.others |= batch

    def _take_ints(self, ids: npt.NDArray[np.int64], first_row: int) -> None:
        small = (ids >= 0) & (ids < self.BITMAP_LIMIT)
        order = np.argsort(ids, kind="stable")
        repeated = np.flatnonzero(ids[order][1:] == ids[order][:-1])
        first_bad = int(order[repeated + 1].min()) if len(repeated) else len(ids)
        values = ids[small]
        if len(values):
            top = int(values.max()) >> 3
            if top >= len(self.bits):
                self.bits = np.concatenate(
                    [self.bits, np.zeros(max(top + 1, 2 * len(self.bits)) - len(self.bits), np.uint8)]
                )
            taken = (self.bits[values >> 3] >> (values & 7).astype(np.uint8)) & 1
            if taken.any():
                first_bad = min(first_bad, int(np.flatnonzero(small)[np.argmax(taken)]))
        for offset in np.flatnonzero(~small):
            if int(ids[offset]) in self.others:
                first_bad = min(first_bad, int(offset))
        if first_bad < len(ids):
            raise _repeated(int(ids[first_bad]), first_row + first_bad)
        np.bitwise_or.at(self.bits, values >> 3, (1 << (values & 7)).astype(np.uint8))
        self.others.update(int(value) for value in ids[~small])


def _repeated(value: Any, row: int) -> InputError:
    return InputError(f"id {value!r} of row {row} was already added: ids in a shard set must be unique")


def _as_int_ids(ids: Sequence[Any] | npt.NDArray[Any], first_row: int) -> npt.NDArray[np.int64]:
    """Ids as int64, never through floats: a value outside the int64 range is refused, not wrapped."""
    try:
        array: npt.NDArray[Any] | None = np.asarray(ids)
    except OverflowError:
        array = None
    if array is not None and array.dtype.kind == "i":
        return array.astype(np.int64)
    if array is not None and array.dtype.kind == "u":
        too_big = array > np.iinfo(np.int64).max
        if too_big.any():
            bad = int(np.argmax(too_big))
            raise InputError(f"id of row {first_row + bad} is {array[bad]}, beyond the int64 range")
        return array.astype(np.int64)
    out = np.empty(len(ids), dtype=np.int64)
    for offset, value in enumerate(ids):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InputError(f"id of row {first_row + offset} must be an integer, got {value!r}")
        if not INT64_MIN <= int(value) <= INT64_MAX:
            raise InputError(f"id of row {first_row + offset} is {value}, outside the int64 range")
        out[offset] = int(value)
    return out


class ShardWriter:
    """Streams embeddings and their ids into a new shard directory.

    Use as a context manager: leaving the block normally closes the set (manifest `complete`);
    an exception discards only the unfinished shard, keeping every finished one listed.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        dim: int,
        dtype: DType = "fp16",
        rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
        id_type: IdType = "int",
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if dtype not in _NUMPY_DTYPES:
            raise InputError(f"dtype must be 'fp16' or 'fp32', got {dtype!r}")
        if id_type not in ("int", "str"):
            raise InputError(f"id_type must be 'int' or 'str', got {id_type!r}")
        if dim <= 0 or rows_per_shard <= 0:
            raise InputError(f"dim and rows_per_shard must be positive, got {dim} and {rows_per_shard}")
        self.directory = Path(directory)
        if (self.directory / MANIFEST_NAME).exists():
            raise FileExistsError(
                f"{self.directory / MANIFEST_NAME}: the directory already holds a shard set"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        manifest = Manifest(dim, dtype, id_type, rows_per_shard, dict(metadata or {}))
        manifest.save(self.directory)
        self._attach(self.directory, manifest)

    def _attach(self, directory: Path, manifest: Manifest) -> None:
        """The writer's state for a directory whose manifest lists its finished shards."""
        self.directory = directory
        self.manifest = manifest
        self._np_dtype = _NUMPY_DTYPES[manifest.dtype]
        self._file: _native.ShardFileWriter | None = None
        self._ids: list[Any] = []
        self._cursor: dict[str, Any] | None = None
        self._taken = _TakenIds()

    @classmethod
    def resume(cls, directory: str | os.PathLike[str]) -> ShardWriter:
        """Reopen an incomplete directory after its writer died; continue after its last whole shard.

        Listed shards are checked (header, size, checksum against the manifest); files of the shard
        that was in flight, which the manifest never listed, are removed.
        """
        root = Path(directory)
        manifest = Manifest.load(root)
        if manifest.complete:
            raise ShardFormatError(f"{root / MANIFEST_NAME}: the shard set is complete; nothing to resume")
        for entry in manifest.shards:
            open_entry(root, manifest, entry, False)
        listed = {e.vectors for e in manifest.shards} | {e.ids for e in manifest.shards} | {MANIFEST_NAME}
        for path in root.iterdir():
            if path.name not in listed and path.name.startswith(("vectors-", "ids-", MANIFEST_NAME)):
                path.unlink()
        writer = cls.__new__(cls)
        writer._attach(root, manifest)
        if manifest.shards:  # the ids already written stay taken
            written = ShardSet.open(root, allow_incomplete=True).ids()
            writer._taken.take(written if manifest.id_type == "int" else list(written), 0)
        return writer

    @property
    def last_cursor(self) -> dict[str, Any] | None:
        """The cursor recorded with the last finished shard (None before the first)."""
        return self.manifest.shards[-1].cursor if self.manifest.shards else None

    @property
    def rows(self) -> int:
        """Rows added so far, including the unfinished shard."""
        return self.manifest.rows + (self._file.rows if self._file is not None else 0)

    def add(
        self,
        vectors: npt.ArrayLike,
        ids: Sequence[Any] | npt.NDArray[Any],
        cursor: dict[str, Any] | None = None,
    ) -> None:
        """Append (n, dim) vectors with their n ids, starting new shards as needed.

        `cursor` (any JSON object) is recorded with the shard this call finishes, if it finishes
        one: a producer that never lets a call straddle shards can resume from it.
        """
        array = np.asarray(vectors)
        if array.ndim != 2 or array.shape[1] != self.manifest.dim:
            raise InputError(f"vectors must have shape (n, {self.manifest.dim}), got {array.shape}")
        if array.dtype.kind != "f":
            raise InputError(f"vectors must be floating point, got dtype {array.dtype}")
        if len(ids) != array.shape[0]:
            raise InputError(f"got {array.shape[0]} vectors but {len(ids)} ids")
        first = self.rows
        with np.errstate(over="ignore"):  # overflow to inf is reported just below, with the row
            stored = np.ascontiguousarray(array, dtype=self._np_dtype)
        finite = np.isfinite(stored).all(axis=1)
        if not finite.all():
            bad = int(np.argmin(finite))
            raise InputError(
                f"vector of row {first + bad} is not finite in {self.manifest.dtype}"
                " (NaN, infinity, or beyond the fp16 range of 65504)"
            )
        if cursor is not None:
            self._cursor = cursor
        checked_ids: Any = (
            _as_int_ids(ids, first) if self.manifest.id_type == "int" else _validate_str_ids(ids, first)
        )
        self._taken.take(checked_ids, first)
        start = 0
        while start < len(stored):
            if self._file is None:
                name = f"vectors-{len(self.manifest.shards):05d}.fms"
                self._file = _native.ShardFileWriter(
                    str(self.directory / name), self.manifest.dtype, self.manifest.dim
                )
            take = min(len(stored) - start, self.manifest.rows_per_shard - self._file.rows)
            self._file.append(stored[start : start + take])
            self._ids.append(checked_ids[start : start + take])
            start += take
            if self._file.rows == self.manifest.rows_per_shard:
                self._finish_shard()

    def _finish_shard(self) -> None:
        assert self._file is not None
        index = len(self.manifest.shards)
        if self.manifest.id_type == "int":
            ids_name = f"ids-{index:05d}.npy"
            id_array = np.concatenate(self._ids) if self._ids else np.empty(0, dtype=np.int64)
            buffer = io.BytesIO()
            np.save(buffer, id_array, allow_pickle=False)
            id_bytes = buffer.getvalue()
        else:
            ids_name = f"ids-{index:05d}.txt"
            id_bytes = "".join(f"{value}\n" for chunk in self._ids for value in chunk).encode("utf-8")
        write_bytes_atomic(self.directory / ids_name, id_bytes)
        rows = self._file.rows
        checksum = self._file.finalize()
        vectors_name = Path(self._file.path).name
        self._file = None
        self._ids = []
        self.manifest.shards.append(
            ShardEntry(
                vectors_name, ids_name, rows, _hex(checksum), fingerprints.of_bytes(id_bytes), self._cursor
            )
        )
        self._cursor = None
        self.manifest.save(self.directory)

    def close(self) -> Manifest:
        """Finish the last shard and mark the directory complete."""
        if self._file is not None and self._file.rows > 0:
            self._finish_shard()
        elif self._file is not None:
            self._file.abort()
            self._file = None
        self.manifest.complete = True
        self.manifest.save(self.directory)
        return self.manifest

    def abort(self) -> None:
        """Discard the unfinished shard; finished shards stay listed, the set stays incomplete."""
        if self._file is not None:
            self._file.abort()
            self._file = None
            self._ids = []

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@dataclass(frozen=True)
class ShardStatus:
    """What `verify` found for one manifest entry; `error` is None when the shard is sound."""

    vectors: str
    rows: int
    error: str | None


class ShardSet:
    """A read-only view of a shard directory: memory-mapped vectors, ids, exact search."""

    def __init__(
        self, directory: Path, manifest: Manifest, files: list[_native.ShardFile], first_row: int = 0
    ) -> None:
        self.directory = directory
        self.manifest = manifest
        self.files = files
        self.first_row = first_row  # of a shard group: where its row 0 lies in the whole set
        self.offsets = np.cumsum([0] + [f.rows for f in files], dtype=np.int64)
        self._ids: npt.NDArray[Any] | None = None
        # the ids' stable argsort and the ids in that order, built by the first rows_of
        self._id_order: tuple[npt.NDArray[np.int64], npt.NDArray[Any]] | None = None

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        verify: Verify = "size",
        allow_incomplete: bool = False,
        threads: int = 0,
        progress: Progress | None = None,
        shards: tuple[int, int] | None = None,
    ) -> ShardSet:
        """Open and check a shard directory.

        verify="size" checks headers, sizes and the manifest (cheap); "checksum" also hashes every
        payload and id file, `threads` shards at a time (0: one per core), reporting bytes hashed to
        `progress` (task "verify") as each shard is done. A directory whose writer did not
        finish is refused unless allow_incomplete, in which case only its finished shards are visible.
        shards=(start, stop) opens only those shards (a shard group): its rows are numbered from 0 and
        `first_row` says where they start in the whole set.
        """
        root = Path(directory)
        manifest = Manifest.load(root)
        if not manifest.complete and not allow_incomplete:
            raise ShardFormatError(
                f"{root / MANIFEST_NAME}: the shard set is incomplete (its writer did not finish; "
                f"{len(manifest.shards)} whole shards, {manifest.rows} rows); resume or rerun the encode, "
                "or open with allow_incomplete=True"
            )
        first_row = 0
        if shards is not None:
            start, stop = shards
            if not 0 <= start < stop <= len(manifest.shards):
                raise InputError(
                    f"shard group {start}-{stop} does not lie within the {len(manifest.shards)} shards "
                    f"of {root}"
                )
            first_row = sum(entry.rows for entry in manifest.shards[:start])
            manifest = replace(manifest, shards=manifest.shards[start:stop])
        if verify != "checksum":
            opened = [open_entry(root, manifest, entry, False) for entry in manifest.shards]
            return cls(root, manifest, opened, first_row)
        itemsize = 2 if manifest.dtype == "fp16" else 4
        sizes = [entry.rows * manifest.dim * itemsize for entry in manifest.shards]
        done = 0

        def hashed(position: int) -> _native.ShardFile:
            return open_entry(root, manifest, manifest.shards[position], True)  # hashing releases the GIL

        files: list[_native.ShardFile] = []
        with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
            for position, shard in enumerate(pool.map(hashed, range(len(manifest.shards)))):
                files.append(shard)
                done += sizes[position]
                if progress is not None:
                    progress(Update("verify", done, sum(sizes), "B"))
        return cls(root, manifest, files, first_row)

    @staticmethod
    def verify(directory: str | os.PathLike[str]) -> tuple[Manifest, list[ShardStatus]]:
        """Hash every shard and id file of a directory, reporting each problem instead of raising."""
        root = Path(directory)
        manifest = Manifest.load(root)
        statuses = []
        for entry in manifest.shards:
            try:
                open_entry(root, manifest, entry, True)
                error = None
            except (ShardFormatError, OSError) as exc:
                error = str(exc)
            statuses.append(ShardStatus(entry.vectors, entry.rows, error))
        return manifest, statuses

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def dtype(self) -> DType:
        return self.manifest.dtype

    @property
    def metadata(self) -> dict[str, Any]:
        return self.manifest.metadata

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def shard_vectors(self) -> Iterator[npt.NDArray[np.floating[Any]]]:
        """Zero-copy (rows, dim) views of each shard, in order."""
        for f in self.files:
            yield f.vectors

    def check_unchanged(self) -> None:
        """Refuse (ShardFormatError) if a shard file was edited in place or replaced since `open`:
        reading a file truncated under a memory map would kill the process with SIGBUS."""
        for f in self.files:
            f.check_unchanged()

    def ids(self, rows: npt.ArrayLike | None = None) -> npt.NDArray[Any]:
        """Ids of the given global rows (all rows when None); MISSING_ID rows map to -1 / ''."""
        if self._ids is None:
            self._ids = self._load_ids()
        if rows is None:
            return self._ids
        index = np.asarray(rows, dtype=np.int64)
        missing = index == _native.MISSING_ID
        if ((index < 0) & ~missing).any() or (index >= len(self)).any():
            raise InputError(f"row numbers must lie in [0, {len(self)})")
        out = self._ids[np.where(missing, 0, index)] if len(self) else np.empty(index.shape, self._ids.dtype)
        out[missing] = -1 if self.manifest.id_type == "int" else ""
        return out

    def rows_of(self, pids: Sequence[str]) -> npt.NDArray[np.int64]:
        """The row of each pid (by the project's id rule, fastmarco.corpus.ids); -1 where the shard
        set has no such id."""
        if self._id_order is None:
            order = np.argsort(self.ids(), kind="stable")
            self._id_order = order, self.ids()[order]
        order, sorted_ids = self._id_order
        keys = lookup_keys(pids, self.manifest.id_type == "int")
        if not len(sorted_ids):
            return np.full(len(keys), -1, dtype=np.int64)
        where = np.minimum(np.searchsorted(sorted_ids, keys), len(sorted_ids) - 1)
        found = sorted_ids[where] == keys
        return np.where(found, order[where], -1).astype(np.int64)

    def vectors_of(self, rows: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """(len(rows), dim) float32 copies of the given rows' stored vectors."""
        index = np.asarray(rows, dtype=np.int64)
        if ((index < 0) | (index >= len(self))).any():
            raise InputError(f"row numbers must lie in [0, {len(self)})")
        shard = np.searchsorted(self.offsets, index, side="right") - 1
        out = np.empty((len(index), self.dim), dtype=np.float32)
        for s in np.unique(shard):
            picked = shard == s
            out[picked] = self.files[s].vectors[index[picked] - self.offsets[s]]
        return out

    def _load_ids(self) -> npt.NDArray[Any]:
        parts: list[npt.NDArray[Any]] = []
        for entry in self.manifest.shards:
            path = self.directory / entry.ids
            try:
                if self.manifest.id_type == "int":
                    parts.append(np.load(path, allow_pickle=False))
                else:
                    text = path.read_bytes().decode("utf-8")
                    parts.append(np.array(text.split("\n")[:-1], dtype=object))
            except (ValueError, EOFError) as exc:  # a truncated or foreign file (verify='size' lets it by)
                raise ShardFormatError(f"id file '{path}' is unreadable ({exc})") from exc
            if self.manifest.id_type == "int" and (parts[-1].dtype != np.int64 or parts[-1].ndim != 1):
                raise ShardFormatError(
                    f"id file '{path}' holds {parts[-1].dtype} {parts[-1].shape}, not int64 ids"
                )
            if len(parts[-1]) != entry.rows:
                raise ShardFormatError(
                    f"id file '{path}' holds {len(parts[-1])} ids, but the shard has {entry.rows} rows"
                )
        if not parts:
            return np.empty(0, dtype=np.int64 if self.manifest.id_type == "int" else object)
        return np.concatenate(parts)


def open_entry(root: Path, manifest: Manifest, entry: ShardEntry, checksum: bool) -> _native.ShardFile:
    path = root / entry.vectors
    shard = _native.ShardFile(str(path), checksum)
    if shard.dim != manifest.dim:
        raise ShardFormatError(
            f"shard '{path}' has dim {shard.dim}, but the shard set has dim {manifest.dim}"
            " (shards of different models or exports cannot be mixed)"
        )
    if shard.dtype != manifest.dtype:
        raise ShardFormatError(f"shard '{path}' stores {shard.dtype}, but the manifest says {manifest.dtype}")
    if shard.rows != entry.rows:
        raise ShardFormatError(f"shard '{path}' holds {shard.rows} rows, but the manifest lists {entry.rows}")
    if _hex(shard.checksum) != entry.checksum:
        raise ShardChecksumError(
            f"shard '{path}' has checksum {_hex(shard.checksum)}, but the manifest lists {entry.checksum}"
        )
    ids_path = root / entry.ids
    if not ids_path.is_file():
        raise ShardFormatError(f"id file '{ids_path}' is missing")
    # Always, even where `checksum` is off: id files are small (8 B a row) and a swapped or stale one
    # would put other pids on every result.
    actual = fingerprints.of_bytes(ids_path.read_bytes())
    if actual != entry.ids_checksum:
        raise ShardChecksumError(
            f"id file '{ids_path}' hashes to {actual}, but the manifest lists {entry.ids_checksum}"
        )
    return shard


def write_shards(
    directory: str | os.PathLike[str],
    vectors: npt.ArrayLike,
    ids: Sequence[Any] | npt.NDArray[Any],
    **options: Any,
) -> Manifest:
    """Write one in-memory array and its ids as a complete shard directory."""
    array = np.asarray(vectors)
    with ShardWriter(directory, dim=array.shape[1], **options) as writer:
        writer.add(array, ids)
    return writer.manifest


__all__ = [
    "DEFAULT_ROWS_PER_SHARD",
    "MANIFEST_NAME",
    "Manifest",
    "ShardChecksumError",
    "ShardEntry",
    "ShardFormatError",
    "ShardSet",
    "ShardStatus",
    "ShardWriter",
    "write_shards",
]
