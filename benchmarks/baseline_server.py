"""The serving stack a user writes today, for bench_serve.py: FastAPI, `SentenceTransformer.encode` and
a faiss IndexFlatIP over the same embeddings, one encode and one search per request; OpenAI-shaped
/v1/embeddings (one encode per request) and, given a cross-encoder, /v1/rerank (one
`CrossEncoder.predict` per request).

    python baseline_server.py MODEL_DIR SHARD_DIR PORT [CROSS_ENCODER_DIR]

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
from sentence_transformers import CrossEncoder, SentenceTransformer

from fastmarco import ShardSet

model_dir, shard_dir, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = SentenceTransformer(model_dir, device="cpu")
cross = CrossEncoder(sys.argv[4], device="cpu") if len(sys.argv) > 4 else None
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


class Embeddings(BaseModel):
    input: str | list[str]
    model: str | None = None


@app.post("/v1/embeddings")
def embeddings(request: Embeddings) -> dict[str, object]:
    texts = [request.input] if isinstance(request.input, str) else request.input
    vectors = model.encode(texts, normalize_embeddings=True)
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)],
    }


class Rerank(BaseModel):
    query: str
    documents: list[str]
    top_n: int | None = None


@app.post("/v1/rerank")
def rerank(request: Rerank) -> dict[str, object]:
    assert cross is not None, "started without a cross-encoder"
    scores = cross.predict([(request.query, d) for d in request.documents], show_progress_bar=False)
    order = np.argsort(-scores, kind="stable")[: request.top_n or len(request.documents)]
    return {"results": [{"index": int(i), "relevance_score": float(scores[i])} for i in order]}


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
