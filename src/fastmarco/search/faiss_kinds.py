"""The faiss family: the presets pq, ivfpq, opq-ivfpq and hnsw, and any faiss `index_factory` string
(`--factory`). For n rows of dimension d, m = d / 8 sub-quantizers (96 bytes a vector at d = 768)
and nlist = the largest power of two at most 4 sqrt(n) that still leaves 39 training rows per list
(8192 at 8.8M, 512 at 31k):

- pq         `PQ{m}`                        exhaustive over PQ codes;
- ivfpq      `IVF{nlist},PQ{m}`             inverted lists of PQ codes;
- opq-ivfpq  `OPQ{m}_{d},IVF{nlist},PQ{m}`  an OPQ rotation first, since plain PQ loses much recall
  on these anisotropic embeddings; 0.9 GB at 8.8M x 768;
- ivfpq-fs   `IVF{nlist}_HNSW32,PQ{m}x4fs`  4-bit fast-scan PQ (SIMD look-ups in registers) under an
  HNSW coarse quantizer (assignment without scanning every list at 8.8M rows); m / 2 bytes a vector;
- hnsw       `HNSW32`                       graph over full vectors, n (4 d + 256) bytes.

The plan reads list counts and code sizes from the faiss index object a factory describes, never
from the string. Results of every index whose codes are lossy (PQ, SQ, ...) are re-scored exactly
from the fp16 shards over `refine` x k candidates, so compression costs little recall and scores are
comparable across kinds. Training samples rows from the shards without loading them all; adding
streams shard by shard, each memory map dropped after use."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fastmarco import _native
from fastmarco.errors import IndexMismatchError, InputError, ShardFormatError, StoreIOError
from fastmarco.search.backends import SearchResult
from fastmarco.search.index import IndexManifest
from fastmarco.search.kinds import (
    GEMM_FLOPS_PER_CORE,
    SEARCH_OVERHEAD_MS,
    BuildCost,
    FactoryShape,
    IndexKind,
    Serving,
    hnsw_ms,
    register_family,
    register_kind,
    rescore_ms,
    scan_ms,
)
from fastmarco.store.shards import ShardSet

INDEX_FILE = "index.faiss"
ADD_BATCH_ROWS = 65_536
# HNSW: recall@10 0.97 on the test fixture at 256, 0.89 at 128
DEFAULT_EF_SEARCH = 256
# Decoding a code against streaming its bytes: PQ look-up tables (opq-ivfpq at 1M x 768 read 12 MB of
# codes in 13.9 ms, README) and SQ8 de-quantising (SQ8 over 200,000 x 384 read 77 MB in 14 ms)
# and 4-bit fast-scan PQ (IVF8192_HNSW32,PQ48x4fs at 8.8M x 384 read 26 MB of codes in 3.5 ms)
PQ_SLOWDOWN, SQ_SLOWDOWN, FS_SLOWDOWN = 4.0, 1.0, 1.6
SQ_ENCODE_CORE_SECONDS_PER_VALUE = 17e-9  # faiss's SQ8 add, one core (8.7 ns a value on 2 cores)


def pq_subquantizers(dim: int) -> int:
    """8 dimensions per sub-quantizer where d allows it, else the largest divisor of d at most d / 8."""
    target = max(1, dim // 8)
    return next(m for m in range(target, 0, -1) if dim % m == 0)


def ivf_lists(rows: int) -> int:
    """The largest power of two at most 4 sqrt(rows) and at most rows / 39 (at least 1)."""
    cap = max(1, min(4 * math.isqrt(max(rows, 1)), rows // 39))
    return 1 << int(math.log2(cap))


def default_nprobe(nlist: int) -> int | None:
    """An eighth of the lists, at least 64: on 1M x 768 synthetic rows (2048 lists) recall@10 after
    refine is 0.876 at 64 probes, 0.925 at 128, 0.966 at 256, 0.991 at 512 (refine depth does not
    matter there: what the probed lists miss, refine cannot find). None without IVF."""
    return min(nlist, max(64, nlist // 8)) if nlist else None


def _last_line(exc: RuntimeError) -> str:
    return str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__


def _skip_polysemous_training(index: Any) -> None:
    """faiss's factory turns on polysemous training for PQ codes (a simulated-annealing reordering of
    the centroids, ~75 s for PQ48 whatever the row count) so that Hamming distances between codes
    approximate theirs. fastmarco never searches by Hamming distance (polysemous_ht stays 0): the ADC
    scores, and so the results, are the same without it."""
    import faiss

    inner = faiss.downcast_index(index.index if isinstance(index, faiss.IndexPreTransform) else index)
    if hasattr(inner, "do_polysemous_training"):
        inner.do_polysemous_training = False


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


@dataclass
class FaissBackend:
    """faiss candidates (refine x k of them for lossy codes), re-scored exactly from the shards."""

    shard_set: ShardSet
    index: Any
    refine: int
    ef_search: int | None = None

    def __post_init__(self) -> None:
        self.shard_views = list(self.shard_set.shard_vectors())

    def search(
        self, queries: npt.NDArray[np.float32], k: int, *, threads: int = 0, refine: int | None = None
    ) -> SearchResult:
        factor = self.refine if refine is None else refine
        depth = min(max(k, k * factor), self.index.ntotal) if factor else min(k, self.index.ntotal)
        params = None
        if self.ef_search:  # HNSW: explore at least 4k candidates whatever k is asked
            import faiss

            params = faiss.SearchParametersHNSW(  # type: ignore[attr-defined]  # missing from faiss's stubs
                efSearch=max(self.ef_search, 4 * depth)
            )
        _, candidates = self.index.search(queries, max(depth, 1), params=params)
        scores = np.empty((queries.shape[0], k), dtype=np.float32)
        rows = np.empty((queries.shape[0], k), dtype=np.int64)
        self.shard_set.check_unchanged()
        # exact scores for every kind, so results and scores are comparable across index kinds
        _native.refine_topk(
            queries, self.shard_views, np.ascontiguousarray(candidates), k, "ip", scores, rows, threads
        )
        return SearchResult(scores, rows, self.shard_set.ids(rows))


class FaissFamily:
    name = "faiss"

    def claims(self, factory: str) -> bool:
        """Any factory string no family before it claims: faiss says at describe whether it is one."""
        return True

    def describe(self, factory: str, dim: int) -> FactoryShape:
        import faiss

        try:
            index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise InputError(
                f"factory {factory!r} is not a faiss index_factory string for dim {dim} ({_last_line(exc)})"
            ) from exc
        try:
            ivf = faiss.extract_index_ivf(index)
        except RuntimeError:
            ivf = None
        inner: Any = faiss.downcast_index(
            index.index if isinstance(index, faiss.IndexPreTransform) else index
        )
        hnsw = hasattr(inner, "hnsw")
        if ivf is not None:
            code, full = ivf.code_size + 8, ivf.code_size  # + the 8-byte row id kept in each list
        elif hnsw:
            code = inner.storage.sa_code_size() + 4 * inner.hnsw.nb_neighbors(0)
            full = inner.storage.sa_code_size()
        else:
            code = full = index.sa_code_size()
        return FactoryShape(
            factory,
            nlist=ivf.nlist if ivf is not None else 0,
            code_bytes=code,
            trains=not index.is_trained,
            hnsw=hnsw,
            opq=factory.startswith("OPQ"),
            lossy=full < 4 * dim,
        )

    def cost(self, shard_set: ShardSet, shape: FactoryShape, train_rows: int) -> BuildCost:
        rows, dim, train = len(shard_set), shard_set.dim, train_rows
        centroids = shape.nlist * dim * 4
        codebooks = 256 * dim * 4 if shape.lossy else 0
        rotation = dim * dim * 4 if shape.opq else 0
        index_bytes = rows * shape.code_bytes + centroids + codebooks + rotation
        itemsize = 2 if shard_set.dtype == "fp16" else 4
        largest_shard = max((f.rows for f in shard_set.files), default=0) * dim * itemsize
        opq = 2 if shape.opq else 1
        # OPQ trains on up to 65,536 rows and keeps several rotated and reconstructed copies of them
        opq_copies = min(train, 65_536) * dim * 4 * 4 if shape.opq else 0
        training = train * dim * 4 * (opq + 1) + opq_copies + largest_shard
        adding = index_bytes + ADD_BATCH_ROWS * dim * 4 * (opq + 1) + largest_shard
        if shape.hnsw:
            adding = index_bytes + ADD_BATCH_ROWS * dim * 4 + largest_shard
        nlist = shape.nlist or 1
        cores = os.cpu_count() or 1
        # k-means and assignment are GEMMs (GEMM_FLOPS_PER_CORE); HNSW inserts and OPQ's 240 rounds of
        # 256-centroid k-means on 8-wide sub-vectors run far below that (~6 GFLOP/s a core, measured)
        # assignment: every row against every list, or (an HNSW quantizer, "IVF..._HNSW32") ~1,000 lists
        assigned = min(nlist, 1_000) if "_HNSW" in shape.factory else nlist
        gemm = 2.0 * dim * (train * nlist * 10 + rows * assigned)
        # HNSW inserts: 406 s measured at 1M x 768 (2 cores), 3,787 s at 8.8M x 384 (SQ8): the cost of
        # an insert grows with the graph, as rows^0.3
        slow = 200.0 * rows * dim * 32 * (max(rows, 1) / 1e6) ** 0.3 if shape.hnsw else 0.0
        if shape.opq:
            slow += 2.0 * min(train, 65_536) * 256 * dim * 240
        seconds = gemm / (GEMM_FLOPS_PER_CORE * cores) + slow / (6e9 * cores) + rows * dim * 2 / 1e9
        if "SQ" in shape.factory:  # encoding every value: SQ8 over 8.8M x 768 took 72.5 s (13.6 s reading)
            seconds += rows * dim * SQ_ENCODE_CORE_SECONDS_PER_VALUE / cores
        return BuildCost(max(training, adding), index_bytes, seconds)

    def search_defaults(self, shape: FactoryShape) -> tuple[int | None, int | None]:
        return default_nprobe(shape.nlist), DEFAULT_EF_SEARCH if shape.hnsw else None

    def serving(self, shard_set: ShardSet, shape: FactoryShape, refine: int) -> Serving:
        """The index lives in RAM. An exhaustive or IVF scan decodes its codes at PQ_ or SQ_SLOWDOWN x
        the cost of streaming them; a graph walks HNSW32; lossy codes are then re-scored exactly."""
        rows, dim = len(shard_set), shard_set.dim
        held = rows * shape.code_bytes + shape.nlist * dim * 4
        after = SEARCH_OVERHEAD_MS + (rescore_ms(10 * max(1, refine), dim) if shape.lossy else 0.0)
        if shape.hnsw:
            return Serving(held, hnsw_ms(rows, dim, max(DEFAULT_EF_SEARCH, 40 * max(1, refine))) + after)
        per_row = shape.code_bytes - (8 if shape.nlist else 0)
        probed = rows * (default_nprobe(shape.nlist) or shape.nlist) / shape.nlist if shape.nlist else rows
        coarse = 0 if "_HNSW" in shape.factory else shape.nlist * dim * 4  # a graph finds the lists
        slowdown = PQ_SLOWDOWN
        if "SQ" in shape.factory:
            slowdown = SQ_SLOWDOWN
        elif shape.factory.endswith("fs"):  # 4-bit fast-scan PQ: look-ups in SIMD registers
            slowdown = FS_SLOWDOWN
        return Serving(held, scan_ms(slowdown * probed * per_row + coarse) + after)

    def build(
        self, shard_set: ShardSet, shape: FactoryShape, train_rows: int, device: str,
        say: Callable[[str], None], out: Path,
    ) -> dict[str, Any]:  # fmt: skip
        """Train on sampled rows, fill shard by shard, write OUT/index.faiss."""
        import faiss

        index = faiss.index_factory(shard_set.dim, shape.factory, faiss.METRIC_INNER_PRODUCT)
        _skip_polysemous_training(index)
        try:
            if shape.trains:
                if device == "cuda" and shape.nlist:
                    ivf = faiss.extract_index_ivf(index)
                    ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(ivf.d))
                say(f"training {shape.factory} on {train_rows:,} sampled rows ({device})")
                index.train(_sample_rows(shard_set, train_rows))
            for s, entry in enumerate(shard_set.files):
                shard = _native.ShardFile(entry.path)
                vectors = shard.vectors
                for start in range(0, shard.rows, ADD_BATCH_ROWS):
                    index.add(np.ascontiguousarray(vectors[start : start + ADD_BATCH_ROWS], dtype=np.float32))
                say(f"added shard {s + 1}/{len(shard_set.files)} ({index.ntotal:,} rows)")
                del vectors, shard
        except RuntimeError as exc:  # faiss refuses some factories only when used (e.g. IDMap needs ids)
            raise InputError(
                f"faiss cannot build {shape.factory} from these shards ({_last_line(exc)})"
            ) from exc
        faiss.write_index(index, str(out / INDEX_FILE))
        return {"index_bytes": (out / INDEX_FILE).stat().st_size}

    def open(
        self, directory: Path, manifest: IndexManifest, shard_set: ShardSet, nprobe: int | None
    ) -> FaissBackend:
        import faiss

        index_path = directory / INDEX_FILE
        if not index_path.is_file():
            raise StoreIOError(f"{index_path}: missing from the index directory; rebuild the index")
        try:
            index = faiss.read_index(str(index_path))
        except RuntimeError as exc:
            raise ShardFormatError(
                f"{index_path}: faiss cannot read it (truncated or corrupt); rebuild the index"
            ) from exc
        if index.ntotal != len(shard_set) or index.d != shard_set.dim:
            raise IndexMismatchError(
                f"{directory / 'index.json'}: index holds {index.ntotal} x {index.d}, "
                f"shards {len(shard_set)} x {shard_set.dim}"
            )
        if nprobe is not None and nprobe <= 0:
            raise InputError(f"nprobe must be positive, got {nprobe}")
        probes = nprobe or manifest.nprobe
        if probes:
            faiss.ParameterSpace().set_index_parameters(index, f"nprobe={probes}")  # type: ignore[arg-type]
        return FaissBackend(shard_set, index, manifest.refine, manifest.ef_search)


FAISS = register_family(FaissFamily(), fallback=True)


def _pq(rows: int, dim: int) -> str:
    return f"PQ{pq_subquantizers(dim)}"


def _ivfpq(rows: int, dim: int) -> str:
    return f"IVF{ivf_lists(rows)},PQ{pq_subquantizers(dim)}"


def _ivfpq_fastscan(rows: int, dim: int) -> str:
    m = pq_subquantizers(dim)
    return f"IVF{ivf_lists(rows)}_HNSW32,PQ{m + m % 2}x4fs"


def _opq_ivfpq(rows: int, dim: int) -> str:
    m = pq_subquantizers(dim)
    return f"OPQ{m}_{dim},IVF{ivf_lists(rows)},PQ{m}"


# recall_at_10: measured at these defaults on the calibrated synthetic rows (bench_query.py at 1M x 768)
register_kind(IndexKind("pq", FAISS, _pq, recall_at_10=0.99))
register_kind(IndexKind("ivfpq", FAISS, _ivfpq, recall_at_10=0.95))
register_kind(IndexKind("opq-ivfpq", FAISS, _opq_ivfpq, recall_at_10=0.966))
# ivfpq-fs: 0.58 at 8,841,823 x 384 (4-bit codes of 8 dimensions each lose too much for refine 50)
register_kind(IndexKind("ivfpq-fs", FAISS, _ivfpq_fastscan, recall_at_10=0.58))
register_kind(IndexKind("hnsw", FAISS, lambda rows, dim: "HNSW32", recall_at_10=0.983))
