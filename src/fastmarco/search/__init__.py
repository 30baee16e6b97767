"""Search over shard sets: the index kinds (kinds.py) and the families that register them."""

from fastmarco.search import binary_kinds, exact, faiss_kinds, int8_kinds  # noqa: F401  (register the families and kinds)
