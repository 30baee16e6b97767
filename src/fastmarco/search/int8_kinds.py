"""The int8 kinds: faiss's 8-bit scalar quantizer (`SQ8`: each dimension mapped linearly onto 0..255
between its minimum and maximum over the training sample, trained per dimension and stored in the
index file), flat, under inverted lists or under an HNSW graph. They are faiss factories, so the
faiss family builds, opens and refines them (lossy codes: re-scored exactly from the fp16 shards);
this module only names them:

- int8        `SQ8`                 every code, dim bytes a row (4 x smaller than fp32);
- int8-ivf    `IVF{nlist},SQ8`      inverted lists of codes;
- int8-hnsw   `HNSW32_SQ8`          a graph over the codes (dim + 256 bytes a row)."""

from __future__ import annotations

from fastmarco.search.faiss_kinds import FAISS, ivf_lists
from fastmarco.search.kinds import IndexKind, register_kind

# refine 4: recall@10 / @100 0.999 / 0.996 for HNSW32_SQ8 at 200,000 x 384 synthetic rows; SQ8 codes
# lose little, so more candidates only cost time (HNSW explores 4 x as many as it returns)
register_kind(IndexKind("int8", FAISS, lambda rows, dim: "SQ8", refine=4, recall_at_10=1.0))
register_kind(
    IndexKind("int8-ivf", FAISS, lambda rows, dim: f"IVF{ivf_lists(rows)},SQ8", refine=4, recall_at_10=0.95)
)
# recall_at_10: int8-hnsw 0.905 over 8,841,823 x 384 synthetic rows (efSearch 256 bounds it; 0.999 at
# 200,000); int8 and int8-ivf are not measured at that scale yet
register_kind(IndexKind("int8-hnsw", FAISS, lambda rows, dim: "HNSW32_SQ8", refine=4, recall_at_10=0.90))
