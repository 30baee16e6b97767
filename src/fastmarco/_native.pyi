"""
fastmarco native core: embedding shard files, exact top-k search and top-k merging.
"""
from __future__ import annotations
import collections.abc
import numpy
import typing
import typing_extensions
__all__: list[str] = ['BUILD_MARCH', 'FORMAT_VERSION', 'HEADER_BYTES', 'MISSING_ID', 'ShardFile', 'ShardFileWriter', 'checksum', 'exact_search', 'hamming_auto_kernel', 'hamming_kernels', 'hamming_topk', 'merge_topk', 'refine_topk', 'set_simd_variant', 'simd_compiled', 'simd_variant', 'simd_variants']
class ShardFileWriter:
    """
    Appends rows to '<path>.tmp' and publishes '<path>' atomically on finalize().
    """
    def __init__(self, path: str, dtype: str, dim: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def abort(self) -> None:
        """
        Removes the temporary file.
        """
    def append(self, rows: numpy.ndarray) -> None:
        """
        Appends a C-contiguous (n, dim) array of the writer's dtype and dim (both checked).
        """
    def finalize(self) -> int:
        """
        Writes the header, fsyncs and renames into place; returns the payload checksum.
        """
    @property
    def dim(self) -> int:
        ...
    @property
    def dtype(self) -> str:
        ...
    @property
    def is_open(self) -> bool:
        ...
    @property
    def path(self) -> str:
        ...
    @property
    def rows(self) -> int:
        ...
class ShardFile:
    """
    A read-only memory map of a finished shard file.
    """
    def __init__(self, path: str, verify_checksum: bool = False) -> None:
        ...
    def check_unchanged(self) -> None:
        """
        Raises ShardFormatError if the file was modified in place or replaced since it was opened.
        """
    def verify_checksum(self) -> None:
        """
        Hashes the payload; raises ShardChecksumError on mismatch.
        """
    @property
    def checksum(self) -> int:
        ...
    @property
    def dim(self) -> int:
        ...
    @property
    def dtype(self) -> str:
        ...
    @property
    def format_version(self) -> int:
        ...
    @property
    def path(self) -> str:
        ...
    @property
    def rows(self) -> int:
        ...
    @property
    def vectors(self) -> numpy.ndarray:
        """
        Zero-copy read-only (rows, dim) numpy view of the payload; keeps the map alive.
        """
def checksum(data: typing_extensions.Buffer) -> int:
    """
    XXH3-64 of a contiguous buffer: the checksum the shard format uses.
    """
def exact_search(queries: numpy.ndarray, rows: numpy.ndarray, k: typing.SupportsInt | typing.SupportsIndex, metric: str, out_scores: numpy.ndarray, out_ids: numpy.ndarray, threads: typing.SupportsInt | typing.SupportsIndex = 0) -> None:
    """
    Exact top-k of float32 queries (nq, dim) against float16/float32 rows (n, dim).
    Fills out_scores (nq, k) float32 and out_ids (nq, k) int64 best-first; ties go to the lower row;
    missing results are (-inf, -1). threads=0 uses every hardware thread.
    """
def hamming_auto_kernel() -> str:
    """
    The kernel 'auto' runs: the fastest within the active SIMD variant (simd_variant()).
    """
def hamming_kernels() -> list[str]:
    """
    The Hamming kernels this CPU runs, fastest first.
    """
def hamming_topk(queries: numpy.ndarray, codes: numpy.ndarray, k: typing.SupportsInt | typing.SupportsIndex, out_distances: numpy.ndarray, out_ids: numpy.ndarray, threads: typing.SupportsInt | typing.SupportsIndex = 0, kernel: str = 'auto') -> None:
    """
    Exhaustive Hamming top-k of packed uint8 query codes (nq, nbytes) against codes (n, nbytes).
    Fills out_distances (nq, k) int32 and out_ids (nq, k) int64 nearest first; ties go to the lower row;
    missing results are (-1, -1). kernel: auto or one of hamming_kernels().
    """
def merge_topk(scores: numpy.ndarray, ids: numpy.ndarray, id_offsets: numpy.ndarray, out_scores: numpy.ndarray, out_ids: numpy.ndarray) -> None:
    """
    Merges (nshard, nq, k) best-first lists into (nq, k); ids are shifted by id_offsets[shard].
    """
def refine_topk(queries: numpy.ndarray, shards: collections.abc.Sequence[numpy.ndarray], candidates: numpy.ndarray, k: typing.SupportsInt | typing.SupportsIndex, metric: str, out_scores: numpy.ndarray, out_ids: numpy.ndarray, threads: typing.SupportsInt | typing.SupportsIndex = 0) -> None:
    """
    Exactly re-scores candidate global rows (nq, ncand) against the shards' rows (a list of (n, dim)
    float16/float32 arrays, concatenated in order) and keeps the k best per query, best-first;
    ties go to the lower id, missing results are (-inf, -1).
    """
def set_simd_variant(name: str) -> None:
    """
    Runs the kernels with this variant from now on (tests, bug reports); one this CPU cannot run is an error.
    """
def simd_compiled() -> list[str]:
    """
    Every SIMD variant this build holds, widest first.
    """
def simd_variant() -> str:
    """
    The SIMD variant the kernels run: FASTMARCO_SIMD where set, else the widest this CPU runs.
    """
def simd_variants() -> list[str]:
    """
    The SIMD variants this build holds and this CPU runs, widest first.
    """
BUILD_MARCH: str = ''
FORMAT_VERSION: int = 1
HEADER_BYTES: int = 64
MISSING_ID: int = -1
