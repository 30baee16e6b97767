"""The index kind registry: each kind (`--kind`) names a preset factory of an index family, and each
family owns what its indexes need end to end: describe a factory, plan a build, build it, and open it
as a `SearchBackend`. Three families today: the native exact search over the shards (exact.py),
sign-bit codes searched by Hamming distance (binary_kinds.py) and faiss (faiss_kinds.py; int8_kinds.py
names its scalar-quantizer presets). A new kind of an existing family is one `register_kind` call; a
new family is one module that registers its family and kinds, imported by search/__init__.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from fastmarco.errors import InputError

if TYPE_CHECKING:
    from fastmarco.search.backends import SearchBackend
    from fastmarco.search.index import IndexManifest
    from fastmarco.store.shards import ShardSet

AUTO = "auto"
AUTO_FLAT_BELOW = 200_000  # auto: exact below this many rows, else AUTO_LARGE
AUTO_LARGE = "opq-ivfpq"
DEFAULT_REFINE = 50  # candidates re-scored per result for kinds (and --factory strings) not saying


@dataclass(frozen=True)
class FactoryShape:
    """What a factory string builds, read from the index object it describes (never the string)."""

    factory: str
    nlist: int  # IVF lists; 0 without an IVF stage
    code_bytes: int  # bytes stored per vector (codes, list ids and graph links)
    trains: bool  # needs training before adding
    hnsw: bool
    opq: bool
    lossy: bool  # codes lose information: results are re-scored exactly from the shards


@dataclass(frozen=True)
class BuildCost:
    """A family's estimate of one build: RAM beyond the process's baseline, index bytes, seconds."""

    ram_bytes: int
    disk_bytes: int
    seconds: float


@dataclass(frozen=True)
class Serving:
    """A family's estimate of serving an index: anonymous memory it holds (maps of the shards or codes
    live in the page cache and are not counted), and one query's search at k 10 on this machine's
    cores (encoding not included). Rates are measured on a 2-core x86 VM (benchmarks/bench_scale.py)."""

    rss_bytes: int
    query_ms: float


# What the estimates are made of, measured on the 2-core development VM (an AVX-512 Xeon) at 200,000
# to 8,841,823 rows (benchmarks/results/scale_*.json; another CPU family has other rates): one query
# streams memory-resident data at SCAN_BYTES_PER_SECOND, each candidate re-scored exactly costs
# RESCORE_SECONDS_PER_BYTE x dim x 2 bytes, and a server's own memory is SERVER_BASE_BYTES (Python,
# ONNX Runtime, faiss) plus MODEL_RSS_PER_FILE_BYTE x its query model's ONNX file: 195 MB served with
# all-MiniLM-L6-v2 int8 (66.5 MB file), 328 MB with the DistilBERT-base shape int8 (170 MB).
SCAN_BYTES_PER_SECOND = 12e9  # flat read 6.8 GB of fp16 rows in 572 ms at 8,841,823 x 384
RESCORE_SECONDS_PER_BYTE = 0.5e-9
SERVER_BASE_BYTES = 110 << 20
MODEL_RSS_PER_FILE_BYTE = 1.3
DEFAULT_MODEL_FILE_BYTES = 66_525_019  # all-MiniLM-L6-v2 exported --int8: when the model is not known


def server_rss_bytes(model_file_bytes: int | None = None) -> int:
    """A server's own memory besides its index, serving a query model whose ONNX file has this size."""
    model = DEFAULT_MODEL_FILE_BYTES if model_file_bytes is None else model_file_bytes
    return SERVER_BASE_BYTES + int(MODEL_RSS_PER_FILE_BYTE * model)


GEMM_FLOPS_PER_CORE = 50e9  # k-means and list assignment (faiss, AVX-512): IVF8192 training at 8.8M
SEARCH_OVERHEAD_MS = 0.3  # a search call's fixed cost (Python, the result's ids) besides the scans
# faiss HNSW32_SQ8, efSearch 256, one query over 8,841,823 x 384 rows (1.2 ms at 200,000): a walk
# grows as rows^0.38 here, once the graph is far larger than the caches
HNSW_MS_AT_8M_384 = 5.1
HNSW_ROWS_EXPONENT = 0.38


def scan_ms(nbytes: float) -> float:
    return nbytes / SCAN_BYTES_PER_SECOND * 1e3


def rescore_ms(candidates: int, dim: int) -> float:
    """Re-scoring `candidates` rows exactly from fp16 shards (random reads from the page cache)."""
    return candidates * dim * 2 * RESCORE_SECONDS_PER_BYTE * 1e3


def hnsw_ms(rows: int, dim: int, ef_search: int) -> float:
    """A graph search visits ~ef_search x M nodes, each a distance of `dim` values."""
    growth: float = (max(rows, 1) / 8_841_823) ** HNSW_ROWS_EXPONENT
    return HNSW_MS_AT_8M_384 * (ef_search / 256) * (dim / 384) * growth


class IndexFamily(Protocol):
    name: str

    def claims(self, factory: str) -> bool:
        """Whether this family builds and opens indexes of `factory`."""
        ...

    def describe(self, factory: str, dim: int) -> FactoryShape: ...

    def cost(self, shard_set: ShardSet, shape: FactoryShape, train_rows: int) -> BuildCost: ...

    def search_defaults(self, shape: FactoryShape) -> tuple[int | None, int | None]:
        """(nprobe, ef_search) an index of this shape is searched with unless told otherwise."""
        ...

    def serving(self, shard_set: ShardSet, shape: FactoryShape, refine: int) -> Serving:
        """What serving an index of `shape` over `shard_set` costs, with its default search settings."""
        ...

    def build(
        self, shard_set: ShardSet, shape: FactoryShape, train_rows: int, device: str,
        say: Callable[[str], None], out: Path,
    ) -> dict[str, Any]:  # fmt: skip
        """Build into the folder `out`; returns what the manifest's 'build' record adds."""
        ...

    def open(
        self, directory: Path, manifest: IndexManifest, shard_set: ShardSet, nprobe: int | None
    ) -> SearchBackend: ...


@dataclass(frozen=True)
class IndexKind:
    """A named preset: the factory its family builds for rows x dim, and how many candidates per
    result its searches re-score exactly unless told (what its first pass needs for recall@10 >= 0.95
    on the calibrated synthetic data; benchmarks/bench_scale.py measures it)."""

    name: str
    family: IndexFamily
    preset: Callable[[int, int], str]
    refine: int = DEFAULT_REFINE
    recall_at_10: float | None = None  # expected at its defaults on calibrated synthetic data (the planner)


INDEX_FAMILIES: list[IndexFamily] = []  # asked in order: the first that claims a factory owns it
FALLBACK_FAMILIES: list[IndexFamily] = []  # asked after every other family (faiss claims any string)
INDEX_KINDS: dict[str, IndexKind] = {}


def register_family(family: IndexFamily, *, fallback: bool = False) -> IndexFamily:
    """Add `family`; a `fallback` one is asked only when no other claims a factory."""
    (FALLBACK_FAMILIES if fallback else INDEX_FAMILIES).append(family)
    return family


def register_kind(kind: IndexKind) -> IndexKind:
    if kind.name in INDEX_KINDS or kind.name == AUTO:
        raise ValueError(f"index kind {kind.name!r} is registered twice")
    INDEX_KINDS[kind.name] = kind
    return kind


def kind_names() -> tuple[str, ...]:
    """What `--kind` accepts: auto, then every registered kind."""
    return (AUTO, *INDEX_KINDS)


def index_kind(name: str, rows: int) -> IndexKind:
    """The registered kind `name`; auto resolves by the row count."""
    if name == AUTO:
        name = "flat" if rows < AUTO_FLAT_BELOW else AUTO_LARGE
    try:
        return INDEX_KINDS[name]
    except KeyError:
        raise InputError(f"kind must be one of {', '.join(kind_names())}, got {name!r}") from None


def family_for(factory: str) -> IndexFamily:
    """The family that owns indexes of `factory` (a preset's or a user's factory string)."""
    for family in (*INDEX_FAMILIES, *FALLBACK_FAMILIES):
        if family.claims(factory):
            return family
    raise InputError(f"no index family builds factory {factory!r}")
