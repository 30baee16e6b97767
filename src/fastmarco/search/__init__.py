"""Search over shard sets: the index kinds (kinds.py) and the families that register them."""

from fastmarco.search import exact, faiss_kinds  # noqa: F401  (register the index families and kinds)
