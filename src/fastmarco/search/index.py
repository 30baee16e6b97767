"""Index directories built from a shard directory: the plan and build of any registered index kind
(fastmarco.search.kinds), and the `index.json` / `groups.json` manifests.

`--kind` names a registered kind (flat, pq, ivfpq, opq-ivfpq, hnsw; see exact.py and faiss_kinds.py)
or auto: flat below 200,000 rows (exact, and a single query stays under ~40 ms on 2 cores),
opq-ivfpq from there on, the default. Any faiss `index_factory` string works too (`--factory`).
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np

from fastmarco import fingerprints
from fastmarco._atomic import publishing
from fastmarco._json import Count, Positive, load_manifest, save_manifest
from fastmarco.errors import IndexMismatchError, InputError, ManifestError
from fastmarco.progress import Progress, noting
from fastmarco.search.kinds import AUTO, DEFAULT_REFINE, FactoryShape, family_for, index_kind
from fastmarco.store.shards import MANIFEST_NAME as SHARDS_MANIFEST
from fastmarco.store.shards import ShardSet, Verify

INDEX_MANIFEST = "index.json"
INDEX_FORMAT = "fastmarco-index"
INDEX_VERSION = 2  # 1: absolute shard path; 2: shard path relative to the index directory
GROUP_INDEX_VERSION = 3  # 2 plus 'shard_range': an index over one shard group (older readers refuse it)
GROUPS_MANIFEST = "groups.json"
GROUPS_FORMAT = "fastmarco-index-groups"
GROUPS_VERSION = 1
# Earlier index.json schemas and what brings each to the next. Version 1 recorded the shard directory
# as an absolute path, which `shard_directory` still reads as it is; version 3 added 'shard_range'
# (null: every shard). Single indexes are still written as version 2, which older readers open.
INDEX_MIGRATIONS = {
    1: lambda body: {**body, "version": 2},
    2: lambda body: {**body, "version": 3, "shard_range": body.get("shard_range")},
}


def factory_for(kind: str, rows: int, dim: int) -> str:
    """The factory string kind `kind` builds for rows x dim (auto resolved by the row count)."""
    return index_kind(kind, rows).preset(rows, dim)


def describe_factory(factory: str, dim: int) -> FactoryShape:
    """What `factory` builds, as the family that owns it reads it."""
    return family_for(factory).describe(factory, dim)


@dataclass(frozen=True)
class IndexPlan:
    kind: str
    factory: str
    rows: int
    dim: int
    train_rows: int
    ram_bytes: int
    disk_bytes: int
    seconds: float

    def describe(self) -> str:
        gib = 1 << 30
        return (
            f"{self.kind} ({self.factory}) over {self.rows:,} x {self.dim}: "
            f"train on {self.train_rows:,} rows; "
            f"peak RAM ~{self.ram_bytes / gib:.2f} GiB, index on disk ~{self.disk_bytes / gib:.2f} GiB, "
            f"build time ~{self.seconds:,.0f} s (rough)"
        )


def _min_train_rows(shape: FactoryShape) -> int:
    """faiss refuses to train k-means with fewer points than centroids: 256 for 8-bit PQ/SQ codebooks."""
    return max(shape.nlist, 256) if shape.trains else 0


def resolve_shape(
    kind: str, factory: str | None, train_rows: int | None, rows: int, dim: int
) -> tuple[FactoryShape, int]:
    """The factory a build uses and the rows it trains on; too few rows is an error saying what to do."""
    shape = describe_factory(factory or factory_for(kind, rows, dim), dim)
    if not shape.trains:
        return shape, 0
    if train_rows is not None and train_rows <= 0:
        raise InputError(f"train rows must be positive, got {train_rows}")
    train = min(rows, train_rows or max(64 * (shape.nlist or 256), 65_536))
    needed = _min_train_rows(shape)
    if train < needed:
        raise InputError(
            f"{shape.factory} needs at least {needed:,} training rows, but "
            f"{'the shard set has' if train == rows else 'only'} {train:,}; use --kind flat (exact search, "
            "the right choice at this size) or a smaller index"
        )
    return shape, train


def _current_rss() -> int:
    """This process's resident memory now: the baseline a build's plan adds to."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def plan_index(
    shard_dir: str | os.PathLike[str],
    kind: str = AUTO,
    factory: str | None = None,
    train_rows: int | None = None,
) -> IndexPlan:
    """What a build will need: peak RAM (this process's baseline included), disk and rough time."""
    import faiss  # noqa: F401  (its import is part of the baseline being measured)

    shard_set = ShardSet.open(shard_dir)
    rows, dim = len(shard_set), shard_set.dim
    shape, train = resolve_shape(kind, factory, train_rows, rows, dim)
    cost = family_for(shape.factory).cost(shard_set, shape, train)
    ram = _current_rss() + cost.ram_bytes
    return IndexPlan(kind, shape.factory, rows, dim, train, ram, cost.disk_bytes, cost.seconds)


@dataclass(frozen=True)
class IndexManifest:
    """`index.json`: what was built, from which shards (by relative path and checksums), how to search."""

    kind: str
    factory: str
    rows: Count
    dim: Positive
    shards: str  # the shard directory, relative to the index directory (absolute in version 1)
    shards_manifest: str  # XXH3-64 of the shard set's manifest.json when the index was built
    nprobe: Count | None = None
    ef_search: Count | None = None
    refine: Count = 0
    metric: Literal["ip"] = "ip"
    model_fingerprint: str | None = None
    shard_checksums: list[tuple[str, str]] = field(default_factory=list)  # [vectors, ids] per shard
    build: dict[str, Any] = field(default_factory=dict)
    version: int = INDEX_VERSION
    shard_range: tuple[Count, Count] | None = None  # [start, stop): a shard group's index; None: every shard

    def __post_init__(self) -> None:
        if self.shard_range is not None and not self.shard_range[0] < self.shard_range[1]:
            raise ValueError("field 'shard_range' must be [start, stop) with 0 <= start < stop")

    def shard_directory(self, index_dir: Path) -> Path:
        return Path(self.shards) if Path(self.shards).is_absolute() else index_dir / self.shards

    def save(self, directory: Path) -> None:
        body = msgspec.to_builtins(self)
        if self.shard_range is None:
            del body["shard_range"]
        save_manifest(directory / INDEX_MANIFEST, body, format=INDEX_FORMAT)

    @classmethod
    def load(cls, directory: Path) -> IndexManifest:
        manifest = load_manifest(
            directory / INDEX_MANIFEST,
            cls,
            ManifestError,
            format=INDEX_FORMAT,
            version=GROUP_INDEX_VERSION,
            migrations=INDEX_MIGRATIONS,
            missing="build an index with `fastmarco index`",
        )
        # The schema its writer wrote: a single index is still version 2, a group's index version 3.
        return replace(
            manifest, version=INDEX_VERSION if manifest.shard_range is None else GROUP_INDEX_VERSION
        )


def shard_manifest_checksum(shard_root: Path) -> str:
    return fingerprints.of_bytes((shard_root / SHARDS_MANIFEST).read_bytes())


def check_shards_unchanged(manifest_path: Path, shard_root: Path, recorded: str) -> None:
    """Refuse an index whose shard directory is gone or whose shard manifest changed since the build."""
    try:
        current = shard_manifest_checksum(shard_root)
    except OSError as exc:
        if shard_root.is_dir():  # the folder is there, its manifest.json is not
            raise IndexMismatchError(
                f"{manifest_path}: its shard directory {shard_root} has no readable {SHARDS_MANIFEST} "
                f"({exc.strerror}): the shard set is incomplete or damaged; restore it or re-encode"
            ) from exc
        raise IndexMismatchError(
            f"{manifest_path}: its shard directory {shard_root} (field 'shards') is gone ({exc.strerror}); "
            "keep the shards where the index expects them, relative to it"
        ) from exc
    if current != recorded:
        raise IndexMismatchError(
            f"{manifest_path}: built for another state of {shard_root} (its manifest changed since); "
            "rebuild the index"
        )


def build_index(
    shard_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    kind: str = AUTO,
    factory: str | None = None,
    train_rows: int | None = None,
    nprobe: int | None = None,
    refine: int | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    device: Literal["cpu", "cuda"] = "cpu",
    verify: bool = True,
    shard_range: tuple[int, int] | None = None,
) -> IndexManifest:
    """Train and fill a faiss index from the shards and publish INDEX_DIR atomically.

    shard_range=(start, stop) builds the index of one shard group: over those shards only, its rows
    numbered from the group's first row (see `build_index_groups`).

    verify=True hashes every shard and id file first (multithreaded) and refuses a corrupt one, so an
    index is never built over, and never records the checksums of, damaged shards.

    device="cuda" runs the IVF k-means on every GPU faiss sees (the faiss `clustering_index` recipe);
    the index itself stays a CPU index, so the file is the same kind whatever built it.
    """
    options = _BuildOptions(kind, factory, train_rows, nprobe, refine, device, verify, progress)
    target = Path(out)
    with publishing(target, overwrite=overwrite, verb="index", inputs=[shard_dir]) as staging:
        manifest = _build(Path(shard_dir).resolve(), staging, target, options, shard_range)
    return manifest


@dataclass(frozen=True)
class _BuildOptions:
    """What `build_index` and `build_index_groups` were asked, checked when made."""

    kind: str
    factory: str | None
    train_rows: int | None
    nprobe: int | None
    refine: int | None  # None: the kind's default (DEFAULT_REFINE for a --factory string)
    device: str
    verify: bool
    progress: Progress | None

    def __post_init__(self) -> None:
        import faiss

        if self.device not in ("cpu", "cuda"):
            raise InputError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if (self.refine is not None and self.refine < 0) or (self.nprobe is not None and self.nprobe <= 0):
            raise InputError(f"refine must be >= 0 and nprobe positive, got {self.refine} and {self.nprobe}")
        gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        if self.device == "cuda" and gpus == 0:
            raise InputError(
                "device 'cuda' asked for, but the installed faiss sees no GPU (faiss.get_num_gpus() is 0); "
                "install faiss-gpu-cu12 (pip install 'fastmarco[gpu]') or build with --device cpu"
            )


def _refine(options: _BuildOptions, rows: int) -> int:
    if options.refine is not None:
        return options.refine
    return DEFAULT_REFINE if options.factory is not None else index_kind(options.kind, rows).refine


def _build(
    shard_root: Path,
    staging: Path,
    target: Path,
    options: _BuildOptions,
    shard_range: tuple[int, int] | None,
) -> IndexManifest:
    """Build into the empty folder `staging`, to be published as `target`."""
    import faiss

    say = noting(options.progress, "index")
    if options.verify:
        say("verifying shard checksums")
    check: Verify = "checksum" if options.verify else "size"
    shard_set = ShardSet.open(shard_root, verify=check, shards=shard_range, progress=options.progress)
    rows, dim = len(shard_set), shard_set.dim
    shape, train = resolve_shape(options.kind, options.factory, options.train_rows, rows, dim)
    nprobe = options.nprobe
    if shape.nlist and nprobe is not None and nprobe > shape.nlist:
        raise InputError(f"nprobe {nprobe} is more than the {shape.nlist} lists of {shape.factory}")
    family = family_for(shape.factory)
    started = time.perf_counter()
    built = family.build(shard_set, shape, train, options.device, say, staging)
    default_nprobe, ef_search = family.search_defaults(shape)
    manifest = IndexManifest(
        kind=options.kind if options.factory is None else "custom",
        factory=shape.factory,
        rows=rows,
        dim=dim,
        # relative to the published directory: moving shards and index together keeps it valid
        shards=os.path.relpath(shard_root, target.resolve()),
        shards_manifest=shard_manifest_checksum(shard_root),
        nprobe=nprobe or default_nprobe,
        ef_search=ef_search,
        refine=_refine(options, rows) if shape.lossy else 0,
        model_fingerprint=shard_set.metadata.get("model", {}).get("fingerprint"),
        shard_checksums=[(e.checksum, e.ids_checksum) for e in shard_set.manifest.shards],
        build={
            "seconds": time.perf_counter() - started,
            "train_rows": train,
            "faiss": faiss.__version__,
            "device": options.device,
            **built,
        },
        version=INDEX_VERSION if shard_range is None else GROUP_INDEX_VERSION,
        shard_range=shard_range,
    )
    manifest.save(staging)
    return manifest


@dataclass(frozen=True)
class ShardGroup:
    """One group of a grouped index: its index directory (relative), shards [start, stop), rows."""

    directory: str
    shards: tuple[Count, Count]
    first_row: Count
    rows: Count
    factory: str

    def __post_init__(self) -> None:
        if Path(self.directory).name != self.directory:
            raise ValueError(f"field 'directory' must be a folder name, got {self.directory!r}")

    def describe(self) -> str:
        start, stop = self.shards
        last = self.first_row + self.rows - 1
        return f"{self.directory} (shards {start}-{stop - 1}, rows {self.first_row:,}-{last:,})"


@dataclass(frozen=True)
class GroupsManifest:
    """`groups.json`: a shard set cut into contiguous shard groups, each with its own INDEX_DIR, so
    each group can be searched by its own process or machine and the results merged."""

    kind: str
    factory: str | None
    rows: Count
    dim: Positive
    shards: str  # the shard directory, relative to the grouped index directory
    shards_manifest: str
    model_fingerprint: str | None
    groups: list[ShardGroup]
    version: int = GROUPS_VERSION

    def __post_init__(self) -> None:
        next_shard = next_row = 0
        for position, group in enumerate(self.groups):
            start, stop = group.shards
            if start != next_shard or group.first_row != next_row or stop <= start:
                raise ValueError(
                    f"field 'groups[{position}]' does not follow the previous group (shards, rows in order)"
                )
            next_shard, next_row = stop, group.first_row + group.rows
        if not self.groups or next_row != self.rows:
            raise ValueError(f"field 'groups' must cover all {self.rows:,} rows")

    def shard_directory(self, directory: Path) -> Path:
        return directory / self.shards

    def save(self, directory: Path) -> None:
        save_manifest(directory / GROUPS_MANIFEST, self, format=GROUPS_FORMAT)

    @classmethod
    def load(cls, directory: Path) -> GroupsManifest:
        return load_manifest(
            directory / GROUPS_MANIFEST,
            cls,
            ManifestError,
            format=GROUPS_FORMAT,
            version=GROUPS_VERSION,
            missing="build one with `fastmarco index --groups`",
        )


def split_shard_groups(shard_rows: list[int], groups: int) -> list[tuple[int, int]]:
    """`groups` contiguous [start, stop) shard ranges with row counts as even as shard boundaries allow."""
    if groups <= 0 or groups > len(shard_rows):
        raise InputError(
            f"cannot cut {len(shard_rows)} shards into {groups} groups (each group needs a shard); "
            "choose fewer groups or re-encode with a smaller --shard-size"
        )
    cumulative = np.cumsum([0, *shard_rows])
    cuts = [0]
    for g in range(1, groups):
        target = g * cumulative[-1] / groups
        low, high = cuts[-1] + 1, len(shard_rows) - (groups - g)
        cuts.append(min(range(low, high + 1), key=lambda b: abs(cumulative[b] - target)))
    cuts.append(len(shard_rows))
    return list(itertools.pairwise(cuts))


def build_index_groups(
    shard_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    groups: int,
    *,
    kind: str = AUTO,
    factory: str | None = None,
    train_rows: int | None = None,
    nprobe: int | None = None,
    refine: int | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    device: Literal["cpu", "cuda"] = "cpu",
    verify: bool = True,
) -> GroupsManifest:
    """Cut the shard set into `groups` contiguous shard groups and build one index per group (the same
    kind for all: 'auto' is decided from the whole set's rows, the lists sized from each group's),
    published atomically together as OUT/groups.json and OUT/group-NNN/."""
    options = _BuildOptions(kind, factory, train_rows, nprobe, refine, device, verify, progress)
    shard_root = Path(shard_dir).resolve()
    target = Path(out)
    with publishing(target, overwrite=overwrite, verb="index", inputs=[shard_root]) as staging:
        whole = ShardSet.open(shard_root)
        ranges = split_shard_groups([entry.rows for entry in whole.manifest.shards], groups)
        if kind == "auto" and factory is None:
            options = replace(options, kind=index_kind(AUTO, len(whole)).name)
        say = noting(progress, "index")
        listed = []
        for position, shard_range in enumerate(ranges):
            name = f"group-{position:03d}"
            (staging / name).mkdir()
            say(f"group {position + 1}/{len(ranges)}: shards {shard_range[0]}-{shard_range[1] - 1}")
            built = _build(shard_root, staging / name, target / name, options, shard_range)
            first_row = int(whole.offsets[shard_range[0]])
            listed.append(ShardGroup(name, shard_range, first_row, built.rows, built.factory))
        manifest = GroupsManifest(
            kind=kind if factory is None else "custom",
            factory=factory,
            rows=len(whole),
            dim=whole.dim,
            shards=os.path.relpath(shard_root, target.resolve()),
            shards_manifest=shard_manifest_checksum(shard_root),
            model_fingerprint=whole.metadata.get("model", {}).get("fingerprint"),
            groups=listed,
        )
        manifest.save(staging)
    return manifest
