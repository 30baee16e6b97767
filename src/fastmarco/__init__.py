"""fastmarco: fast embedding and indexing for MS MARCO-style passage retrieval."""

from __future__ import annotations

from fastmarco._version import __version__
from fastmarco.encode.local import encode_corpus
from fastmarco.engine import Engine
from fastmarco.errors import (
    EncodeMismatchError,
    EncoderError,
    ExportError,
    FastmarcoError,
    FormatError,
    IndexMismatchError,
    InputError,
    ManifestError,
    ShardChecksumError,
    ShardFormatError,
    StoreIOError,
)
from fastmarco.model.encoder import Encoder
from fastmarco.model.export import export_model
from fastmarco.search.backends import SearchResult, VectorIndex
from fastmarco.search.index import build_index
from fastmarco.search.kernels import MISSING_ID, exact_search, merge_topk
from fastmarco.store.passages import PassageStore
from fastmarco.store.shards import ShardSet, ShardWriter

__all__ = [
    "MISSING_ID",
    "EncodeMismatchError",
    "Encoder",
    "EncoderError",
    "Engine",
    "ExportError",
    "FastmarcoError",
    "FormatError",
    "IndexMismatchError",
    "InputError",
    "ManifestError",
    "PassageStore",
    "SearchResult",
    "ShardChecksumError",
    "ShardFormatError",
    "ShardSet",
    "ShardWriter",
    "StoreIOError",
    "VectorIndex",
    "__version__",
    "build_index",
    "encode_corpus",
    "exact_search",
    "export_model",
    "merge_topk",
]
