"""The serving stack a user writes today, for bench_serve.py: FastAPI, `SentenceTransformer.encode` and
a faiss IndexFlatIP over the same embeddings, one encode and one search per request.

    python baseline_server.py MODEL_DIR SHARD_DIR PORT

A sync endpoint, as the FastAPI tutorial writes it (FastAPI runs it on its thread pool, so concurrent
requests encode at the same time and share the cores). Binds 127.0.0.1 only.
"""

from __future__ import annotations

import sys

import faiss
import numpy as np
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from sentence_transformers import SentenceTransformer

from fastmarco import ShardSet

model_dir, shard_dir, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = SentenceTransformer(model_dir, device="cpu")
shards = ShardSet.open(shard_dir)
index = faiss.IndexFlatIP(shards.dim)
for vectors in shards.shard_vectors():
    index.add(np.asarray(vectors, dtype=np.float32))
pids = shards.ids()
app = FastAPI()


class Search(BaseModel):
    query: str
    k: int = 10


@app.post("/search")
def search(request: Search) -> dict[str, object]:
    vector = model.encode([request.query], normalize_embeddings=True)
    scores, rows = index.search(vector, request.k)
    return {
        "results": [
            {
                "hits": [
                    {"pid": str(pids[r]), "score": float(s)} for s, r in zip(scores[0], rows[0], strict=True)
                ]
            }
        ]
    }


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
