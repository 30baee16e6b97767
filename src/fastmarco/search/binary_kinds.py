"""The binary family: each embedding's sign bits (dim / 8 bytes a row, 32 x smaller than fp32), searched
by Hamming distance, then re-scored exactly from the fp16 shards. Three factories:

- `BFlat`         every code, by the native popcount kernel (AVX-512 VPOPCNTDQ, AVX2, POPCNT or
  portable code, picked at run time); the codes are memory-mapped, so they live in the page cache;
- `BIVF{nlist}`   faiss `IndexBinaryIVF`: inverted lists of codes, `nprobe` of them searched;
- `BHNSW{M}`      faiss `IndexBinaryHNSW`: a graph over the codes.

Kinds: `binary` (BFlat), `binary-ivf` (BIVF with the lists of `ivf_lists`), `binary-hnsw` (BHNSW16).

A search keeps the refine x k nearest codes by Hamming distance (ASYMMETRIC_DEPTH times as many when
the asymmetric step is on: those are ranked by the float query's inner product with the codes as +-1
vectors first, and the refine x k best kept), then scores those rows exactly from the shards. Every
index directory keeps `codes.npy` (the asymmetric step reads candidates' codes from it); the faiss
variants add their own index file."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fastmarco import _native
from fastmarco.errors import IndexMismatchError, InputError, ShardFormatError, StoreIOError
from fastmarco.search.backends import SearchResult
from fastmarco.search.faiss_kinds import DEFAULT_EF_SEARCH, default_nprobe, ivf_lists
from fastmarco.search.index import IndexManifest
from fastmarco.search.kinds import (
    GEMM_FLOPS_PER_CORE,
    HNSW_ROWS_EXPONENT,
    SEARCH_OVERHEAD_MS,
    BuildCost,
    FactoryShape,
    IndexKind,
    Serving,
    register_family,
    register_kind,
    rescore_ms,
    scan_ms,
)
from fastmarco.store.shards import ShardSet

CODES_FILE = "codes.npy"
FAISS_BINARY_FILE = "index.faissbin"
ENCODE_BATCH_ROWS = 65_536
# The native kernel's cost per code, both cores, one query: 29.8 ms for 8,841,823 48-byte codes and
# 31.7 ms for 96-byte ones (a load, a popcount and a reduction per row, whatever the width up to 64 B a
# vector): the row count, not the bytes, sets the time
BFLAT_SECONDS_PER_ROW = 3.4e-9
ASYMMETRIC_DEPTH = 4  # Hamming candidates per kept candidate when the asymmetric step is on
# faiss's IndexBinaryHNSW on this 2-core VM: 8,841,823 rows with M 16 took 1,103 s with 384-bit codes
# and 1,073 s with 768-bit ones (n log n from there; 1,000,000 rows alone took 50.8 s, half the rate:
# the graph outgrows the caches); a search at 8.8M rows took ~7.3 ms for an efSearch of 1,600. Both
# are bound by the graph's memory accesses, not by the popcounts, so not by the code width.
BHNSW_BUILD_SECONDS_PER_MILLION = 104.0
BHNSW_MS_PER_EF_AT_8M = 7.3 / 1600
# faiss's binary IVF assigns each row to its list at ~6 ns of one core per (row, centroid) pair,
# whatever the code width up to 96 bytes (as the exhaustive kernel: the pairs, not the bytes)
BIVF_ASSIGN_CORE_SECONDS_PER_PAIR = 6e-9
_ASYMMETRIC_CHUNK_FLOATS = 1 << 24  # unpacked candidate bits scored at once (64 MiB of float32)


def binarize(vectors: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """(n, dim) floats -> (n, ceil(dim / 8)) uint8 sign bits (1 where > 0), first dimension in the
    high bit, as numpy.packbits and sentence-transformers' quantize_embeddings(precision="ubinary")."""
    return np.packbits(np.asarray(vectors) > 0, axis=1)


def _parse(factory: str) -> tuple[str, int] | None:
    """('flat', 0), ('ivf', nlist) or ('hnsw', M) for a binary factory string; None for another."""
    for prefix, variant in (("BIVF", "ivf"), ("BHNSW", "hnsw")):
        size = factory.removeprefix(prefix)
        if factory.startswith(prefix) and size.isdigit() and int(size) > 0:
            return variant, int(size)
    return ("flat", 0) if factory == "BFlat" else None


def _variant(factory: str) -> tuple[str, int]:
    """`_parse` of a factory this family has claimed (so never None)."""
    parsed = _parse(factory)
    if parsed is None:
        raise InputError(f"{factory!r} is not a binary factory (BFlat, BIVF<nlist>, BHNSW<M>)")
    return parsed


def asymmetric_top(
    queries: npt.NDArray[np.float32], rows: npt.NDArray[np.int64], codes: npt.NDArray[np.uint8], depth: int
) -> npt.NDArray[np.int64]:
    """The `depth` of each query's candidate `rows` whose codes, read as +-1 vectors, have the highest
    inner product with the float query (missing rows, -1, last); ties keep the Hamming order."""
    nq, count = rows.shape
    dim = queries.shape[1]
    out = np.full((nq, depth), _native.MISSING_ID, dtype=np.int64)
    chunk = max(1, _ASYMMETRIC_CHUNK_FLOATS // max(1, count * dim))
    for start in range(0, nq, chunk):
        block = rows[start : start + chunk]
        present = block >= 0
        bits = np.unpackbits(codes[np.where(present, block, 0)], axis=-1, count=dim)
        # q . (2b - 1) = 2 q . b - sum(q): the order of q . b is the order of the +-1 product
        scores = np.einsum("qcd,qd->qc", bits, queries[start : start + chunk], dtype=np.float32)
        scores[~present] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
        out[start : start + len(block), : order.shape[1]] = np.take_along_axis(block, order, axis=1)
    return out


@dataclass
class BinaryBackend:
    """Hamming candidates (native or faiss), the optional asymmetric step, exact re-scoring."""

    shard_set: ShardSet
    codes: npt.NDArray[np.uint8]
    refine: int
    faiss_index: Any = None  # BIVF / BHNSW; None: the native exhaustive kernel over `codes`
    ef_search: int | None = None
    asymmetric: bool = True
    shard_views: list[Any] = field(init=False)

    def __post_init__(self) -> None:
        self.shard_views = list(self.shard_set.shard_vectors())

    def hamming(self, queries: npt.NDArray[np.float32], depth: int, threads: int) -> npt.NDArray[np.int64]:
        """(nq, depth) rows nearest by Hamming distance, nearest first (-1 where there are fewer)."""
        codes = binarize(queries)
        if self.faiss_index is None:
            distances = np.empty((len(queries), depth), dtype=np.int32)
            rows = np.empty((len(queries), depth), dtype=np.int64)
            _native.hamming_topk(codes, self.codes, depth, distances, rows, threads)
            return rows
        params = None
        if self.ef_search:
            import faiss

            params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, 4 * depth))  # type: ignore[attr-defined]
        _, rows = self.faiss_index.search(codes, depth, params=params)
        return np.ascontiguousarray(rows, dtype=np.int64)

    def search(
        self, queries: npt.NDArray[np.float32], k: int, *, threads: int = 0, refine: int | None = None
    ) -> SearchResult:
        rows_total = len(self.codes)
        factor = self.refine if refine is None else refine
        depth = max(1, min(max(k, k * factor), rows_total))
        first = min(depth * ASYMMETRIC_DEPTH, rows_total) if self.asymmetric else depth
        candidates = self.hamming(queries, max(first, 1), threads)
        if self.asymmetric and first > depth:
            candidates = asymmetric_top(queries, candidates, self.codes, depth)
        scores = np.empty((queries.shape[0], k), dtype=np.float32)
        rows = np.empty((queries.shape[0], k), dtype=np.int64)
        self.shard_set.check_unchanged()
        _native.refine_topk(queries, self.shard_views, candidates, k, "ip", scores, rows, threads)
        return SearchResult(scores, rows, self.shard_set.ids(rows))


def _open_codes(path: Path, rows: int, dim: int) -> npt.NDArray[np.uint8]:
    if not path.is_file():
        raise StoreIOError(f"{path}: missing from the index directory; rebuild the index")
    try:
        codes: npt.NDArray[np.uint8] = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as exc:
        raise ShardFormatError(f"{path}: not a readable code file ({exc}); rebuild the index") from exc
    if codes.dtype != np.uint8 or codes.shape != (rows, math.ceil(dim / 8)):
        raise IndexMismatchError(
            f"{path}: holds {codes.shape} {codes.dtype} codes, the shards {rows} x {dim} need "
            f"({rows}, {math.ceil(dim / 8)}) uint8; rebuild the index"
        )
    return codes


class BinaryFamily:
    name = "binary"

    def claims(self, factory: str) -> bool:
        return _parse(factory) is not None

    def describe(self, factory: str, dim: int) -> FactoryShape:
        variant, size = _variant(factory)
        code = math.ceil(dim / 8)
        stored = {"flat": code, "ivf": 2 * code + 8, "hnsw": 2 * code + 4 * 2 * size}[variant]
        return FactoryShape(
            factory,
            nlist=size if variant == "ivf" else 0,
            code_bytes=stored,  # codes.npy, plus the faiss index's own copy, list ids or graph links
            trains=variant == "ivf",
            hnsw=variant == "hnsw",
            opq=False,
            lossy=True,
        )

    def cost(self, shard_set: ShardSet, shape: FactoryShape, train_rows: int) -> BuildCost:
        rows, dim = len(shard_set), shard_set.dim
        cores = os.cpu_count() or 1
        code = math.ceil(dim / 8)
        itemsize = 2 if shard_set.dtype == "fp16" else 4
        batch = ENCODE_BATCH_ROWS * dim * (4 + 1)  # a float32 batch and its bits
        largest_shard = max((f.rows for f in shard_set.files), default=0) * dim * itemsize
        # resident: the shard being read and the code file being written (both maps), the batch, and
        # for BIVF / BHNSW the faiss index's own copy of the codes with its list ids or links
        ram = batch + largest_shard + rows * shape.code_bytes
        read = rows * dim * itemsize / 1e9  # one pass over the shards at ~1 GB/s
        seconds = read + rows * dim / 3e8  # packbits, ~300 M values/s
        if shape.nlist:  # binary k-means and assignment: BIVF8192 at 8.8M rows, 313 s (384), 386 s (768)
            seconds += 2.0 * dim * train_rows * shape.nlist / (GEMM_FLOPS_PER_CORE / 2 * cores)
            # assignment costs per (row, centroid) pair, not per byte: 48- and 96-byte codes alike
            seconds += rows * shape.nlist * BIVF_ASSIGN_CORE_SECONDS_PER_PAIR / cores
        if shape.hnsw:
            links = (shape.code_bytes - 2 * code) / 8  # M
            growth = math.log(max(rows, 2)) / math.log(1e6)
            seconds += BHNSW_BUILD_SECONDS_PER_MILLION * rows / 1e6 * growth * links / 16 * 2 / cores
        return BuildCost(ram, rows * shape.code_bytes, seconds)

    def search_defaults(self, shape: FactoryShape) -> tuple[int | None, int | None]:
        return default_nprobe(shape.nlist), DEFAULT_EF_SEARCH if shape.hnsw else None

    def serving(self, shard_set: ShardSet, shape: FactoryShape, refine: int) -> Serving:
        """BFlat reads every code (a map: page cache); BIVF holds its lists and reads nprobe of them;
        BHNSW holds codes and links. Then the asymmetric step and the exact re-scoring."""
        rows, dim = len(shard_set), shard_set.dim
        code = math.ceil(dim / 8)
        depth = max(1, 10 * refine)
        after = SEARCH_OVERHEAD_MS + rescore_ms(depth * (1 + ASYMMETRIC_DEPTH), dim)
        if shape.hnsw:  # efSearch as `BinaryBackend.hamming` sets it for the first pass's depth
            ef = max(DEFAULT_EF_SEARCH, 4 * depth * ASYMMETRIC_DEPTH)
            growth = (max(rows, 1) / 8_841_823) ** HNSW_ROWS_EXPONENT
            return Serving(rows * (shape.code_bytes - code), BHNSW_MS_PER_EF_AT_8M * ef * growth + after)
        if shape.nlist:
            probed = rows * code * (default_nprobe(shape.nlist) or shape.nlist) / shape.nlist
            # faiss's IVF scan of binary lists runs at ~2/5 of the native kernel's rate (measured)
            return Serving(rows * (code + 8), scan_ms(2.5 * probed + shape.nlist * code) + after)
        return Serving(0, rows * BFLAT_SECONDS_PER_ROW * 1e3 + after)

    def build(
        self, shard_set: ShardSet, shape: FactoryShape, train_rows: int, device: str,
        say: Callable[[str], None], out: Path,
    ) -> dict[str, Any]:  # fmt: skip
        """Write OUT/codes.npy shard by shard; for BIVF / BHNSW, a faiss binary index over them."""
        rows, dim = len(shard_set), shard_set.dim
        codes_path = out / CODES_FILE
        codes = np.lib.format.open_memmap(
            codes_path, mode="w+", dtype=np.uint8, shape=(rows, math.ceil(dim / 8))
        )
        for s, entry in enumerate(shard_set.files):
            shard = _native.ShardFile(entry.path)  # a private map, dropped after this shard
            first = int(shard_set.offsets[s])
            for start in range(0, shard.rows, ENCODE_BATCH_ROWS):
                batch = shard.vectors[start : start + ENCODE_BATCH_ROWS]
                codes[first + start : first + start + len(batch)] = binarize(batch)
            say(f"binarised shard {s + 1}/{len(shard_set.files)} ({first + shard.rows:,} rows)")
            del shard
        codes.flush()
        built: dict[str, Any] = {
            "index_bytes": codes_path.stat().st_size,
            "kernel": _native.hamming_auto_kernel(),  # what `auto` runs on the building machine
        }
        variant, _ = _variant(shape.factory)
        if variant != "flat":
            built["index_bytes"] += self._build_faiss(codes, shape, train_rows, dim, say, out)
        del codes
        return built

    @staticmethod
    def _build_faiss(
        codes: npt.NDArray[np.uint8], shape: FactoryShape, train_rows: int, dim: int,
        say: Callable[[str], None], out: Path,
    ) -> int:  # fmt: skip
        import faiss

        if dim % 8:
            raise InputError(f"{shape.factory} needs a dimension that is a multiple of 8, got {dim}")
        index = faiss.index_binary_factory(dim, shape.factory)
        if shape.trains:
            picks = np.sort(np.random.default_rng(0).choice(len(codes), size=train_rows, replace=False))
            say(f"training {shape.factory} on {train_rows:,} sampled codes")
            index.train(np.ascontiguousarray(codes[picks]))
        for start in range(0, len(codes), ENCODE_BATCH_ROWS):
            index.add(np.ascontiguousarray(codes[start : start + ENCODE_BATCH_ROWS]))
        say(f"added {index.ntotal:,} codes to {shape.factory}")
        faiss.write_index_binary(index, str(out / FAISS_BINARY_FILE))
        return (out / FAISS_BINARY_FILE).stat().st_size

    def open(
        self, directory: Path, manifest: IndexManifest, shard_set: ShardSet, nprobe: int | None
    ) -> BinaryBackend:
        codes = _open_codes(directory / CODES_FILE, len(shard_set), shard_set.dim)
        variant, _ = _variant(manifest.factory)
        if nprobe is not None and nprobe <= 0:
            raise InputError(f"nprobe must be positive, got {nprobe}")
        if variant == "flat":
            return BinaryBackend(shard_set, codes, manifest.refine)
        import faiss

        path = directory / FAISS_BINARY_FILE
        if not path.is_file():
            raise StoreIOError(f"{path}: missing from the index directory; rebuild the index")
        try:
            index: Any = faiss.read_index_binary(str(path))
        except RuntimeError as exc:
            raise ShardFormatError(
                f"{path}: faiss cannot read it (truncated or corrupt); rebuild the index"
            ) from exc
        if index.ntotal != len(shard_set) or index.d != 8 * codes.shape[1]:
            raise IndexMismatchError(
                f"{directory / 'index.json'}: {path.name} holds {index.ntotal} x {index.d} bits, "
                f"shards {len(shard_set)} x {shard_set.dim}"
            )
        probes = nprobe or manifest.nprobe
        if variant == "ivf" and probes:
            index.nprobe = probes
        return BinaryBackend(shard_set, codes, manifest.refine, index, manifest.ef_search)


BINARY = register_family(BinaryFamily())
# refine 10: recall@10 / @100 0.996 / 0.994 for BFlat at 200,000 x 384 synthetic rows (0.96 / 0.98 at 4)
# recall_at_10: measured at these defaults over 8,841,823 x 384 calibrated synthetic rows (bench_scale.py);
# binary-hnsw's first pass over a graph of 384-bit codes loses most of it (0.999 at 31,362 rows)
register_kind(IndexKind("binary", BINARY, lambda rows, dim: "BFlat", refine=10, recall_at_10=0.96))
register_kind(
    IndexKind("binary-ivf", BINARY, lambda rows, dim: f"BIVF{ivf_lists(rows)}", refine=10, recall_at_10=0.87)
)
# BHNSW16, not 32: 2 x 16 links a row (128 B) beside a 384-d row's 48 B of code keep 8.8M rows in
# 1.6 GB of RAM, where 32 links would need 2.7 GB
register_kind(IndexKind("binary-hnsw", BINARY, lambda rows, dim: "BHNSW16", refine=10, recall_at_10=0.68))
