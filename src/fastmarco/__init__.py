"""fastmarco: fast embedding and indexing for MS MARCO-style passage retrieval."""

__version__ = "0.1.0"

from fastmarco.search import MISSING_ID, exact_search, merge_topk
from fastmarco.shards import (
    ShardChecksumError,
    ShardFormatError,
    ShardSet,
    ShardWriter,
)

__all__ = [
    "MISSING_ID",
    "ShardChecksumError",
    "ShardFormatError",
    "ShardSet",
    "ShardWriter",
    "__version__",
    "exact_search",
    "merge_topk",
]
