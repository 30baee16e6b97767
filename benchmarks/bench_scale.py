"""The whole MS MARCO passage corpus on one machine: 8,841,823 rows, every index kind side by side.

    python benchmarks/bench_scale.py --dim 384 --model MINILM_INT8_DIR [--rows 8841823]
        [--kinds binary,binary-ivf,int8-hnsw,...] [--peers faiss-flatip,faiss-hnswflat,plain-ivfpq-fs]
        [--validate MINI_SHARDS] [--workdir DIR] [--keep]

Stages, each recorded in WORKDIR/state/ as it finishes so an interrupted run resumes where it stopped:
generate (synthetic embeddings from bench_query's calibrated generator, written through the real
ShardWriter), truth (exact top-100 of --queries queries by the native exact search), then for each
kind build (a child process: its own peak RSS) and measure (another child: a fresh process, as a
server starts). A kind's figures: build seconds, peak build RSS, bytes on disk, serving RSS besides
the page cache (RssAnon) after `Engine.open`, `Engine.open` seconds cold (after dropping the page
cache, when this user may) and warm, batch queries/s (k 10), one-query latency p50/p99 with the
query's int8 encoding included (--model), recall@10 and @100 against the truth. Peers side by side:
faiss IndexFlatIP on fp32 (where it fits in RAM; else the JSON says it does not), IndexHNSWFlat, and
plain IVF-PQ without exact refine (`plain-KIND`: the KIND index searched with refine 0, so the faiss
first pass's own order and recall). Pyserini's published index sizes for the real corpus are a column.
The figures are then set against the goals (scale_goals.py: which kind meets which, by how much each
is missed, and what bounds it).

--validate runs the generator check first: at the mini collection's 31,362 rows, each kind's
recall@10 on synthetic embeddings must be within 0.03 of its recall@10 on the real embeddings
(MINI_SHARDS: the mini collection encoded by a MiniLM export; queries: the 43 TREC-DL 2019 queries
encoded by --model), same parameters. Results go to
benchmarks/results/scale_<rows>x<dim>.json with a recall-against-latency plot beside it; the work
directory is deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import RESULTS, environment, proc_status_bytes, save, save_figure
from bench_query import Generator, latency_summary, query_texts, recall, write_synthetic_shards
from scale_goals import describe as describe_goals
from scale_goals import goal_check

from fastmarco import ShardSet
from fastmarco.search.exact import search_shards
from fastmarco.search.index import build_index, plan_index
from fastmarco.search.kinds import kind_names
from fastmarco.search.planner import available_ram

MSMARCO_ROWS = 8_841_823
DEFAULT_KINDS = "binary,binary-ivf,int8,int8-ivf,int8-hnsw,opq-ivfpq"
DEFAULT_PEERS = "faiss-flatip,faiss-hnswflat,plain-ivfpq-fs"
# Pyserini's prebuilt indexes of the real corpus (msmarco-v1-passage, distilbert-dot-tas_b / v3
# family, 768-d): what users download today, for scale.
PYSERINI_BYTES = {"flat (faiss IndexFlatIP, 768-d)": 25.2e9, "hnsw (faiss IndexHNSWFlat, 768-d)": 33.4e9}
MINI_DL19_QUERIES = Path(__file__).resolve().parents[2] / "shared/data/msmarco-mini/queries.dl19.tsv"


def rss_anon_bytes() -> int:
    """Anonymous resident memory of this process (heap, faiss's index): not the page cache of maps."""
    return proc_status_bytes("RssAnon") or 0


def peak_rss_bytes() -> int:
    """This process's peak resident memory (VmHWM: reset by exec, unlike getrusage's ru_maxrss)."""
    return proc_status_bytes("VmHWM") or 0


def drop_page_cache() -> bool:
    """Whether the kernel's page cache could be dropped (root on Linux); cold opens need it."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


class Run:
    """The work directory: shards, queries, truth, indexes and one JSON per finished stage."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.root: Path = args.workdir
        self.state = self.root / "state"
        self.state.mkdir(parents=True, exist_ok=True)
        self.shards = self.root / "shards"

    def done(self, stage: str) -> dict[str, Any] | None:
        path = self.state / f"{stage}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def record(self, stage: str, body: dict[str, Any]) -> dict[str, Any]:
        tmp = self.state / f"{stage}.json.tmp"
        tmp.write_text(json.dumps(body, indent=2) + "\n")
        tmp.replace(self.state / f"{stage}.json")
        return body

    def queries(self) -> np.ndarray:
        return np.load(self.root / "queries.npy")

    def truth(self) -> np.ndarray:
        return np.load(self.root / "truth.npy")


def stage_generate(run: Run) -> dict[str, Any]:
    args = run.args
    shutil.rmtree(run.shards, ignore_errors=True)  # a partial set from an interrupted run
    started = time.perf_counter()
    write_synthetic_shards(run.shards, args.rows, args.dim, args.rows_per_shard)
    generator = Generator(args.rows, args.dim)
    np.save(run.root / "queries.npy", generator.sample(args.queries, np.random.default_rng(2)))
    return {
        "seconds": time.perf_counter() - started,
        "bytes": sum(f.stat().st_size for f in run.shards.iterdir()),
    }


def stage_truth(run: Run) -> dict[str, Any]:
    started = time.perf_counter()
    _, rows = search_shards(ShardSet.open(run.shards), run.queries(), 100)
    seconds = time.perf_counter() - started
    np.save(run.root / "truth.npy", rows)
    return {"seconds": seconds, "exact_batch_qps": len(rows) / seconds}


def child(run: Run, stage: str, kind: str) -> dict[str, Any]:
    """Run `stage` for `kind` in a fresh process (clean peak RSS, a server's cold start)."""
    command = [sys.executable, __file__, "--child", stage, kind, *sys.argv[1:]]
    done = subprocess.run(command, check=False)
    body = run.done(f"{stage}-{kind}")
    if done.returncode != 0 or body is None:
        return {"error": f"{stage} exited with code {done.returncode}"}
    return body


def child_build(run: Run, kind: str) -> dict[str, Any]:
    target = run.root / f"index-{kind}"
    if kind.startswith("faiss-"):
        return build_faiss_peer(run, target, kind)
    plan = plan_index(run.shards, kind)
    started = time.perf_counter()
    manifest = build_index(run.shards, target, kind=kind, overwrite=True, verify=False)
    return {
        "factory": manifest.factory,
        "build_seconds": time.perf_counter() - started,
        "peak_build_rss_bytes": peak_rss_bytes(),
        "index_bytes": manifest.build["index_bytes"],
        "plan": {"ram_bytes": plan.ram_bytes, "disk_bytes": plan.disk_bytes, "seconds": plan.seconds},
    }


def _fp32_rows(shard_set: ShardSet) -> Any:
    for vectors in shard_set.shard_vectors():
        for start in range(0, len(vectors), 262_144):
            yield np.ascontiguousarray(vectors[start : start + 262_144], dtype=np.float32)


def build_faiss_peer(run: Run, target: Path, kind: str) -> dict[str, Any]:
    """faiss's own flat or HNSW index over fp32 copies of the rows, where it fits in RAM."""
    import faiss

    shard_set = ShardSet.open(run.shards)
    rows, dim = len(shard_set), shard_set.dim
    hnsw = kind == "faiss-hnswflat"
    need = rows * (dim * 4 + (32 * 2 * 4 + 16 if hnsw else 0))
    # faiss grows its code vector by reallocation while adding: the old and the new copy coexist
    # (8,841,823 x 384 fp32, 13.6 GB, was killed by the kernel on a 23 GB machine)
    if 2 * need > 0.9 * available_ram():
        why = (
            f"needs {need / 1e9:.1f} GB of RAM as fp32, twice that while faiss grows it; "
            f"{available_ram() / 1e9:.1f} GB available"
        )
        return {"fits": False, "index_bytes": need, "why": why}
    if hnsw and rows > run.args.hnswflat_max_rows:
        why = (
            f"build too long for this run (rows > --hnswflat-max-rows {run.args.hnswflat_max_rows:,}); "
            "faiss HNSW32 took 406 s at 1M x 768 on 2 cores"
        )
        return {"fits": True, "skipped": why}
    started = time.perf_counter()
    index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT) if hnsw else faiss.IndexFlatIP(dim)
    for block in _fp32_rows(shard_set):
        index.add(block)
    target.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(target / "index.faiss"))
    return {
        "fits": True,
        "factory": "IndexHNSWFlat(32) fp32" if hnsw else "IndexFlatIP (fp32)",
        "build_seconds": time.perf_counter() - started,
        "peak_build_rss_bytes": peak_rss_bytes(),
        "index_bytes": (target / "index.faiss").stat().st_size,
    }


def child_measure(run: Run, kind: str) -> dict[str, Any]:
    """Open as a server does, then recall, batch throughput and one-query latency with encoding."""
    from fastmarco import Engine
    from fastmarco.model.encoder import Encoder

    args = run.args
    queries, truth = run.queries(), run.truth()
    target = run.root / f"index-{kind.removeprefix('plain-')}"
    result: dict[str, Any] = {}
    if kind.startswith("faiss-"):
        return measure_faiss(run, kind, target, queries, truth)
    result["page_cache_dropped"] = drop_page_cache()
    refine = 0 if kind.startswith("plain-") else None
    started = time.perf_counter()
    engine = Engine.open(target, model=args.model, device="cpu", verify=False)
    cold = time.perf_counter() - started
    engine.search_vectors(queries[:10], 10, refine=refine)  # first touch of the index's pages
    # one engine's memory, before a second open can leave the first's freed heap behind
    result["serving_rss_anon_bytes"] = rss_anon_bytes()
    engine.close()
    del engine
    started = time.perf_counter()
    engine = Engine.open(target, model=args.model, device="cpu", verify=False)
    result["open_seconds"] = {
        "cold" if result["page_cache_dropped"] else "first": cold,
        "warm": time.perf_counter() - started,
    }
    started = time.perf_counter()
    found10 = engine.search_vectors(queries, 10, refine=refine).rows
    result["batch_qps"] = len(queries) / (time.perf_counter() - started)
    found100 = engine.search_vectors(queries, 100, refine=refine).rows
    result["recall@10"], result["recall@100"] = recall(found10, truth, 10), recall(found100, truth, 100)
    encoder = Encoder.open(args.model, device="cpu", max_batch=1, busy_wait=False)
    result.update(
        latency(
            lambda i, text: engine.search_vectors(queries[i][None], 10, refine=refine),
            encoder,
            args.latency_queries,
        )
    )
    result["serving_rss_anon_bytes_after"] = rss_anon_bytes()
    return result


def measure_faiss(
    run: Run, kind: str, target: Path, queries: np.ndarray, truth: np.ndarray
) -> dict[str, Any]:
    import faiss

    from fastmarco.model.encoder import Encoder

    built = run.done(f"build-{kind}") or {}
    if not (target / "index.faiss").is_file():
        return {"not_measured": built.get("why") or built.get("skipped") or "not built"}
    started = time.perf_counter()
    index = faiss.read_index(str(target / "index.faiss"))
    result: dict[str, Any] = {"open_seconds": {"warm": time.perf_counter() - started}}
    if kind == "faiss-hnswflat":
        index.hnsw.efSearch = 256
    result["serving_rss_anon_bytes"] = rss_anon_bytes()
    started = time.perf_counter()
    _, found10 = index.search(queries, 10)
    result["batch_qps"] = len(queries) / (time.perf_counter() - started)
    _, found100 = index.search(queries, 100)
    result["recall@10"], result["recall@100"] = recall(found10, truth, 10), recall(found100, truth, 100)
    encoder = Encoder.open(run.args.model, device="cpu", max_batch=1, busy_wait=False)
    result.update(
        latency(lambda i, text: index.search(queries[i][None], 10), encoder, run.args.latency_queries)
    )
    return result


LATENCY_BUDGET_SECONDS = 90.0  # an exhaustive scan of 8.8M rows takes ~1 s a query: stop sooner
MIN_LATENCY_SAMPLES = 20


def latency(search: Any, encoder: Any, count: int) -> dict[str, Any]:
    """One query at a time: encode the text (int8), then search (a synthetic vector of the same width);
    `count` queries, or as many as LATENCY_BUDGET_SECONDS allow (at least MIN_LATENCY_SAMPLES)."""
    total, search_only = [], []
    deadline = time.monotonic() + LATENCY_BUDGET_SECONDS
    for i, text in enumerate(query_texts(count)):
        if i >= MIN_LATENCY_SAMPLES and time.monotonic() > deadline:
            break
        started = time.perf_counter()
        encoder.encode([text])
        searched = time.perf_counter()
        search(i, text)
        done = time.perf_counter()
        total.append(done - started)
        search_only.append(done - searched)
    return {**latency_summary(total, search_only), "latency_samples": len(total)}


def validate_generator(run: Run, kinds: list[str]) -> dict[str, Any]:
    """Recall@10 per kind on the real mini embeddings and on synthetic ones of the same shape, with the
    kind's own parameters; the first pass alone (refine 1) beside it, which tells harder from easier.

    The real queries are TREC-DL 2019's: the mini collection is their BM25 top-100 pools, so their
    neighbourhoods are what the generator was calibrated to (and what the full corpus gives any query);
    dev queries' relevant passages are not in it (their top-1 inner product is 0.47, not 0.80)."""
    from fastmarco.model.encoder import Encoder
    from fastmarco.search.backends import VectorIndex
    from fastmarco.store.formats import load_queries

    args = run.args
    real = ShardSet.open(args.validate)
    real_queries = Encoder.open(args.model, device="cpu").encode(
        list(load_queries(MINI_DL19_QUERIES).values())
    )
    synthetic_dir = run.root / "validate-synthetic"
    if not (synthetic_dir / "manifest.json").is_file():
        shutil.rmtree(synthetic_dir, ignore_errors=True)
        write_synthetic_shards(synthetic_dir, len(real), real.dim, args.rows_per_shard)
    synthetic_queries = Generator(len(real), real.dim).sample(args.queries, np.random.default_rng(2))
    out: dict[str, Any] = {
        "rows": len(real),
        "queries": {"real": len(real_queries), "synthetic": len(synthetic_queries)},
        "kinds": {},
    }
    for name, shards, queries in (
        ("real", Path(args.validate), real_queries),
        ("synthetic", synthetic_dir, synthetic_queries),
    ):
        scores, truth = search_shards(ShardSet.open(shards), queries, 100)
        out[f"score_profile_{name}"] = {f"top{k}": float(scores[:, k - 1].mean()) for k in (1, 10, 100)}
        for kind in kinds:
            target = run.root / f"validate-{name}-{kind}"
            build_index(shards, target, kind=kind, overwrite=True, verify=False)
            index = VectorIndex.open(target, verify=False)
            figures = out["kinds"].setdefault(kind, {})
            figures[f"recall@10_{name}"] = recall(index.search(queries, 10).rows, truth, 10)
            figures[f"first_pass_recall@10_{name}"] = recall(
                index.search(queries, 10, refine=1).rows, truth, 10
            )
            shutil.rmtree(target)
    for kind, figures in out["kinds"].items():
        figures["difference"] = figures["recall@10_synthetic"] - figures["recall@10_real"]
        figures["within_0.03"] = abs(figures["difference"]) <= 0.03
        print(f"  validate {kind}: {figures}", flush=True)
    out["all_within_0.03"] = all(f["within_0.03"] for f in out["kinds"].values())
    return out


def planner_check(run: Run, kinds: dict[str, Any]) -> dict[str, Any]:
    """The planner's estimates (fastmarco index --plan) beside what was measured: measured / estimated,
    with the serving memory of the query model this run served (--model)."""
    from fastmarco.search.planner import estimate_kinds

    out: dict[str, Any] = {}
    model_bytes = sum(path.stat().st_size for path in Path(run.args.model).glob("*.onnx*"))
    for estimate in estimate_kinds(ShardSet.open(run.shards), model_bytes=model_bytes):
        figures = kinds.get(estimate.kind)
        if not figures or "factory" not in figures.get("build", {}):
            continue
        build, measure = figures["build"], figures.get("measure", {})
        pairs = {
            "build_seconds": (build["build_seconds"], estimate.build_seconds),
            "index_bytes": (build["index_bytes"], estimate.index_bytes),
            "serving_rss_bytes": (measure.get("serving_rss_anon_bytes"), estimate.serving_rss_bytes),
            "search_ms": (measure.get("search_latency_ms", {}).get("p50"), estimate.query_ms),
            "recall@10": (measure.get("recall@10"), estimate.recall_at_10),
        }
        out[estimate.kind] = {
            name: {"measured": got, "estimated": want, "ratio": got / want if got and want else None}
            for name, (got, want) in pairs.items()
        }
    return out


def plot(body: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:  # the GPU machine's image has none; the JSON holds every figure
        print("matplotlib is not installed: no plot", flush=True)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for kind, figures in body["kinds"].items():
        measured = figures.get("measure", {})
        if "recall@10" in measured and "search_latency_ms" in measured:
            x, y = measured["search_latency_ms"]["p50"], measured["recall@10"]
            axis.scatter(x, y)
            axis.annotate(kind, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axis.set_xscale("log")
    axis.set_xlabel("one-query search latency p50, ms (log; encoding not included)")
    axis.set_ylabel("recall@10 against exact search")
    axis.set_title(f"{body['rows']:,} x {body['dim']} synthetic rows, {body['environment']['cpus']} cores")
    axis.grid(True, alpha=0.3)
    figure.tight_layout()
    save_figure(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=MSMARCO_ROWS)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--model", required=True, help="exported int8 model of width --dim (query encoding)")
    parser.add_argument("--kinds", default=DEFAULT_KINDS)
    parser.add_argument("--peers", default=DEFAULT_PEERS)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--latency-queries", type=int, default=300)
    parser.add_argument("--rows-per-shard", type=int, default=1_000_000)
    parser.add_argument("--hnswflat-max-rows", type=int, default=2_000_000)
    parser.add_argument("--validate", metavar="MINI_SHARDS", help="run the generator check first")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fastmarco-bench-scale"))
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--label")
    parser.add_argument("--child", nargs=2, metavar=("STAGE", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.workdir = args.workdir / f"{args.rows}x{args.dim}"
    run = Run(args)
    kinds = [k for k in args.kinds.split(",") if k]
    peers = [p for p in args.peers.split(",") if p]
    unknown = set(kinds) - set(kind_names())
    if unknown:
        parser.error(f"--kinds: unknown {sorted(unknown)}; choose from {list(kind_names())}")
    if args.child:
        stage, kind = args.child
        body = child_build(run, kind) if stage == "build" else child_measure(run, kind)
        run.record(f"{stage}-{kind}", body)
        return

    body: dict[str, Any] = {
        "rows": args.rows,
        "dim": args.dim,
        "queries": args.queries,
        "latency_queries": args.latency_queries,
        "model": args.model,
        "kinds": {},
    }
    if args.validate:
        body["generator_validation"] = run.done("validate") or run.record(
            "validate", validate_generator(run, kinds)
        )
    for stage, work in (("generate", stage_generate), ("truth", stage_truth)):
        if run.done(stage) is None:
            print(f"[{stage}]", flush=True)
            run.record(stage, work(run))
        body[stage] = run.done(stage)
    plain = [p for p in peers if p.startswith("plain-")]
    kinds += [p.removeprefix("plain-") for p in plain if p.removeprefix("plain-") not in kinds]
    for kind in [
        *kinds,
        *(p for p in peers if p not in plain),
        *plain,
    ]:
        figures: dict[str, Any] = {}
        for stage in ("build", "measure"):
            if kind in plain and stage == "build":
                continue
            figures[stage] = run.done(f"{stage}-{kind}") or (
                print(f"[{stage} {kind}]", flush=True) or child(run, stage, kind)
            )
        body["kinds"][kind] = figures
        print(f"  {kind}: {json.dumps(figures)}", flush=True)
    body["planner_check"] = planner_check(run, body["kinds"])
    body["pyserini_published_bytes"] = PYSERINI_BYTES
    body["environment"] = environment(["fastmarco", "faiss-cpu", "onnxruntime", "numpy"])
    body["goals"] = goal_check(body)
    print(describe_goals(body["goals"]), flush=True)
    name = f"scale_{args.label or f'{args.rows}x{args.dim}'}"
    path = save(name, body)
    plot(body, RESULTS / f"{name}.png")
    print(f"saved {path}")
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
