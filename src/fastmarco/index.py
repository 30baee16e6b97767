"""faiss indexes built from a shard directory, searched with exact re-scoring from the shards.

Presets (inner product; cosine models store unit vectors, so inner product is cosine), for n rows
of dimension d, m = d / 8 sub-quantizers (96 bytes a vector at d = 768) and nlist = the power of two
nearest 4 sqrt(n) that still leaves 39 training rows per list (16384 at 8.8M):

- flat       `Flat`                       exact search over the fp16 shards by the native core: no
  faiss copy (faiss's IndexFlat would hold n d 4 bytes, 27 GB at 8.8M x 768, and is slower);
- pq         `PQ{m}`                      exhaustive over PQ codes;
- ivfpq      `IVF{nlist},PQ{m}`           inverted lists of PQ codes;
- opq-ivfpq  `OPQ{m}_{d},IVF{nlist},PQ{m}` the default: an OPQ rotation first, since plain PQ
  loses much recall on these anisotropic embeddings; 0.9 GB at 8.8M x 768;
- hnsw       `HNSW32`                     graph over full vectors, n (4 d + 256) bytes.

PQ-based results are re-scored exactly from the fp16 shards (the C++ core) over `refine` x k
candidates (50 x k by default), so compression costs little recall. Training samples rows from the
shards without loading them all; adding streams shard by shard, each memory map dropped after use.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from fastmarco import _native
from fastmarco._atomic import publish_directory
from fastmarco.search import as_queries
from fastmarco.shards import MANIFEST_NAME as SHARDS_MANIFEST
from fastmarco.shards import ShardFormatError, ShardSet

Kind = Literal["flat", "pq", "ivfpq", "opq-ivfpq", "hnsw"]
KINDS: tuple[Kind, ...] = ("flat", "pq", "ivfpq", "opq-ivfpq", "hnsw")
INDEX_MANIFEST = "index.json"
INDEX_FILE = "index.faiss"
INDEX_FORMAT = "fastmarco-index"
ADD_BATCH_ROWS = 65_536
DEFAULT_REFINE = 50


class IndexMismatchError(ValueError):
    """The index does not belong to this shard set or model."""


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


def pq_subquantizers(dim: int) -> int:
    """8 dimensions per sub-quantizer where d allows it, else the largest divisor of d at most d / 8."""
    target = max(1, dim // 8)
    return next(m for m in range(target, 0, -1) if dim % m == 0)


def ivf_lists(rows: int) -> int:
    cap = max(1, min(4 * math.isqrt(max(rows, 1)), rows // 39))
    return 1 << int(math.log2(cap)) if cap >= 1 else 1


def factory_for(kind: Kind, rows: int, dim: int) -> str:
    m, nlist = pq_subquantizers(dim), ivf_lists(rows)
    return {
        "flat": "Flat",
        "pq": f"PQ{m}",
        "ivfpq": f"IVF{nlist},PQ{m}",
        "opq-ivfpq": f"OPQ{m}_{dim},IVF{nlist},PQ{m}",
        "hnsw": "HNSW32",
    }[kind]


def factory_lists(factory: str) -> int:
    """The IVF list count a factory string asks for; 0 when it has no IVF stage."""
    return next((int(p[3:]) for p in factory.split(",") if p.startswith("IVF")), 0)


def default_nprobe(nlist: int) -> int | None:
    """An eighth of the lists, at least 64: on 1M x 768 synthetic rows (2048 lists) recall@10 after
    refine is 0.876 at 64 probes, 0.925 at 128, 0.966 at 256, 0.991 at 512 (refine depth does not
    matter there: what the probed lists miss, refine cannot find). None without IVF."""
    return min(nlist, max(64, nlist // 8)) if nlist else None


def _default_train_rows(factory: str, rows: int) -> int:
    if factory in ("Flat", "HNSW32"):
        return 0
    return min(rows, max(64 * (factory_lists(factory) or 256), 65_536))


def _resolve(kind: Kind, factory: str | None, train_rows: int | None, rows: int, dim: int) -> tuple[str, int]:
    """The factory string a build uses and the rows it trains on."""
    chosen = factory or factory_for(kind, rows, dim)
    train = _default_train_rows(chosen, rows) if train_rows is None else min(train_rows, rows)
    return chosen, train


def _index_bytes(factory: str, rows: int, dim: int) -> int:
    parts = factory.split(",")
    if factory == "Flat":
        return 0  # the shards are the index
    if factory.startswith("HNSW"):
        return rows * (dim * 4 + 2 * 32 * 4)
    m = next(int(p[2:]) for p in parts if p.startswith("PQ"))
    nlist = factory_lists(factory)
    opq = dim * dim * 4 if parts[0].startswith("OPQ") else 0
    ids = 8 if nlist else 0
    return rows * (m + ids) + nlist * dim * 4 + 256 * dim * 4 + opq


def _current_rss() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def plan_index(
    shard_dir: str | os.PathLike[str],
    kind: Kind = "opq-ivfpq",
    factory: str | None = None,
    train_rows: int | None = None,
) -> IndexPlan:
    """What a build will need: peak RAM (this process's baseline included), disk and rough time."""
    import faiss  # noqa: F401  (its import is part of the baseline being measured)

    shard_set = ShardSet.open(shard_dir)
    rows, dim = len(shard_set), shard_set.dim
    chosen, train = _resolve(kind, factory, train_rows, rows, dim)
    index_bytes = _index_bytes(chosen, rows, dim)
    itemsize = 2 if shard_set.dtype == "fp16" else 4
    largest_shard = max((f.rows for f in shard_set.files), default=0) * dim * itemsize
    opq = 2 if chosen.startswith("OPQ") else 1
    # OPQ trains on up to 65,536 rows and keeps several rotated and reconstructed copies of them
    opq_copies = min(train, 65_536) * dim * 4 * 4 if chosen.startswith("OPQ") else 0
    training = train * dim * 4 * (opq + 1) + opq_copies + largest_shard
    adding = index_bytes + ADD_BATCH_ROWS * dim * 4 * (opq + 1) + largest_shard
    if chosen.startswith("HNSW"):
        adding = index_bytes + ADD_BATCH_ROWS * dim * 4 + largest_shard
    if chosen == "Flat":
        training = adding = 0  # nothing is built: searches read the shards
    nlist = factory_lists(chosen) or 1
    cores = os.cpu_count() or 1
    # k-means and assignment are GEMMs (~25 GFLOP/s a core); HNSW inserts and OPQ's 240 rounds of
    # 256-centroid k-means on 8-wide sub-vectors run far below that (~6 GFLOP/s a core, measured)
    gemm = 2.0 * dim * (train * nlist * 10 + rows * nlist)
    slow = 200.0 * rows * dim * 32 if "HNSW" in chosen else 0.0  # 406 s measured at 1M x 768, 2 cores
    if chosen.startswith("OPQ"):
        slow += 2.0 * min(train, 65_536) * 256 * dim * 240
    return IndexPlan(
        kind,
        chosen,
        rows,
        dim,
        train,
        _current_rss() + max(training, adding),
        index_bytes,
        gemm / (25e9 * cores) + slow / (6e9 * cores) + rows * dim * 2 / 1e9,
    )


def _sample_rows(shard_set: ShardSet, count: int, seed: int = 0) -> npt.NDArray[np.float32]:
    """`count` distinct rows, uniformly at random, read shard by shard as float32."""
    picks = np.sort(np.random.default_rng(seed).choice(len(shard_set), size=count, replace=False))
    out = np.empty((count, shard_set.dim), dtype=np.float32)
    filled = 0
    for s in range(len(shard_set.files)):
        lo, hi = shard_set.offsets[s], shard_set.offsets[s + 1]
        local = picks[(picks >= lo) & (picks < hi)] - lo
        shard = _native.ShardFile(shard_set.files[s].path)  # a private map, released after this shard
        out[filled : filled + len(local)] = shard.vectors[local]
        filled += len(local)
        del shard
    return out


def _train_and_fill(
    shard_set: ShardSet, factory: str, train: int, device: str, say: Callable[[str], None]
) -> Any:
    """A faiss index for `factory`, trained on sampled rows and filled shard by shard."""
    import faiss

    index = faiss.index_factory(shard_set.dim, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        if device == "cuda" and factory_lists(factory):
            ivf = faiss.extract_index_ivf(index)
            ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(ivf.d))
        say(f"training {factory} on {train:,} sampled rows ({device})")
        index.train(_sample_rows(shard_set, train))
    for s, entry in enumerate(shard_set.files):
        shard = _native.ShardFile(entry.path)
        vectors = shard.vectors
        for start in range(0, shard.rows, ADD_BATCH_ROWS):
            index.add(np.ascontiguousarray(vectors[start : start + ADD_BATCH_ROWS], dtype=np.float32))
        say(f"added shard {s + 1}/{len(shard_set.files)} ({index.ntotal:,} rows)")
        del vectors, shard
    return index


def build_index(
    shard_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    kind: Kind = "opq-ivfpq",
    factory: str | None = None,
    train_rows: int | None = None,
    nprobe: int | None = None,
    refine: int = DEFAULT_REFINE,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
    device: Literal["cpu", "cuda"] = "cpu",
) -> dict[str, Any]:
    """Train and fill a faiss index from the shards and publish INDEX_DIR atomically.

    device="cuda" runs the IVF k-means on every GPU faiss sees (the faiss `clustering_index` recipe);
    the index itself stays a CPU index, so the file is the same kind whatever built it.
    """
    import faiss

    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if device == "cuda" and gpus == 0:
        raise ValueError(
            "device 'cuda' asked for, but the installed faiss sees no GPU (faiss.get_num_gpus() is 0); "
            "install faiss-gpu-cu12 (pip install 'fastmarco[gpu]') or build with --device cpu"
        )

    say = progress or (lambda message: None)
    target = Path(out)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: already exists (pass overwrite=True / --overwrite to replace it)")
    shard_root = Path(shard_dir).resolve()
    shard_set = ShardSet.open(shard_root)
    rows, dim = len(shard_set), shard_set.dim
    chosen, train = _resolve(kind, factory, train_rows, rows, dim)
    started = time.perf_counter()
    index = None if chosen == "Flat" else _train_and_fill(shard_set, chosen, train, device, say)
    probes = nprobe or default_nprobe(factory_lists(chosen))
    manifest = {
        "format": INDEX_FORMAT,
        "version": 1,
        "kind": kind if factory is None else "custom",
        "factory": chosen,
        "metric": "ip",
        "rows": rows,
        "dim": dim,
        "nprobe": probes,
        # HNSW: recall@10 0.97 on the test fixture at 256, 0.89 at 128
        "ef_search": 256 if chosen.startswith("HNSW") else None,
        "refine": refine if "PQ" in chosen else 0,
        "shards": str(shard_root),
        "shards_manifest": f"{_native.checksum((shard_root / SHARDS_MANIFEST).read_bytes()):016x}",
        "model_fingerprint": shard_set.metadata.get("model", {}).get("fingerprint"),
        "build": {"seconds": 0.0, "train_rows": train, "faiss": faiss.__version__, "device": device},
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        if index is not None:
            faiss.write_index(index, str(staging / INDEX_FILE))
        manifest["build"]["seconds"] = time.perf_counter() - started
        manifest["build"]["index_bytes"] = (staging / INDEX_FILE).stat().st_size if index is not None else 0
        (staging / INDEX_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        (staging / "shards").symlink_to(shard_root, target_is_directory=True)
        publish_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


class VectorIndex:
    """An opened INDEX_DIR: the faiss index (None for flat), its shard set, exact refine. Safe to share
    across threads."""

    def __init__(self, directory: Path, manifest: dict[str, Any], index: Any, shard_set: ShardSet) -> None:
        self.directory = directory
        self.manifest = manifest
        self.index = index
        self.shard_set = shard_set
        self.shard_views = list(shard_set.shard_vectors())

    @classmethod
    def open(cls, directory: str | os.PathLike[str], *, nprobe: int | None = None) -> VectorIndex:
        import faiss

        root = Path(directory)
        path = root / INDEX_MANIFEST
        if not path.is_file():
            raise IndexMismatchError(f"{path}: not found; build one with `fastmarco index`")
        manifest = json.loads(path.read_text())
        if manifest.get("format") != INDEX_FORMAT or manifest.get("version") != 1:
            raise IndexMismatchError(f"{path}: not a fastmarco index of a version this build reads")
        shard_root = Path(manifest["shards"])
        try:
            current = f"{_native.checksum((shard_root / SHARDS_MANIFEST).read_bytes()):016x}"
        except OSError as exc:
            raise IndexMismatchError(f"{path}: its shard directory {shard_root} is gone ({exc})") from exc
        if current != manifest["shards_manifest"]:
            raise IndexMismatchError(
                f"{path}: built for another state of {shard_root} (its manifest changed since);"
                " rebuild the index"
            )
        try:
            shard_set = ShardSet.open(shard_root)
        except ShardFormatError as exc:
            raise IndexMismatchError(f"{path}: its shard directory cannot be opened: {exc}") from exc
        if manifest["factory"] == "Flat":
            return cls(root, manifest, None, shard_set)
        index = faiss.read_index(str(root / INDEX_FILE))
        if index.ntotal != len(shard_set) or index.d != shard_set.dim:
            raise IndexMismatchError(
                f"{path}: index holds {index.ntotal} x {index.d}, shards {len(shard_set)} x {shard_set.dim}"
            )
        settings = {"nprobe": nprobe or manifest.get("nprobe"), "efSearch": manifest.get("ef_search")}
        chosen = ",".join(f"{name}={value}" for name, value in settings.items() if value)
        if chosen:
            faiss.ParameterSpace().set_index_parameters(index, chosen)  # type: ignore[arg-type]  # takes "a=1,b=2"
        return cls(root, manifest, index, shard_set)

    @property
    def model_fingerprint(self) -> str | None:
        return self.manifest.get("model_fingerprint")

    def search(
        self, queries: npt.ArrayLike, k: int, *, refine: int | None = None
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """(scores, global rows), each (nq, k) best first; PQ candidates re-scored exactly."""
        q = as_queries(queries, self.shard_set.dim)
        if self.index is None:
            return self.shard_set.search(q, k)
        factor = self.manifest.get("refine", 0) if refine is None else refine
        depth = min(max(k, k * factor), self.index.ntotal) if factor else min(k, self.index.ntotal)
        params = None
        if self.manifest.get("ef_search"):  # HNSW: explore at least 4k candidates whatever k is asked
            import faiss

            params = faiss.SearchParametersHNSW(  # type: ignore[attr-defined]  # missing from faiss's stubs
                efSearch=max(int(self.manifest["ef_search"]), 4 * depth)
            )
        _, candidates = self.index.search(q, max(depth, 1), params=params)
        scores = np.empty((q.shape[0], k), dtype=np.float32)
        rows = np.empty((q.shape[0], k), dtype=np.int64)
        # exact scores for every kind, so results and scores are comparable across index kinds
        _native.refine_topk(q, self.shard_views, np.ascontiguousarray(candidates), k, "ip", scores, rows)
        return scores, rows
