"""Index build, query latency and throughput, and recall against exact search: flat, hnsw, opq-ivfpq.

    python benchmarks/bench_query.py --rows 1000000 [--dim 768] [--kinds flat,hnsw,opq-ivfpq]
        [--model DIR] [--workdir DIR] [--label name]

For each kind: build time, index size on disk, batch queries/s (--queries queries, k 10), single-query
latency p50/p99 with query encoding included (--model: an exported model, e.g. the DistilBERT-base
shape from shaped_models.py; queries of MS MARCO length drawn from msmarco_profile.json), and
recall@10 / @100 against exact search over the shards (the native core). Saves
benchmarks/results/query_<label>.json.

The embeddings are synthetic (no machine here holds 8.8M real ones): unit vectors around topic
centres (one per 100 rows) in a 96-dimensional latent space, plus isotropic noise and a shared mean
direction. Its scales were tuned so that a query's top-10 and top-100 inner products match those of
the real MiniLM DL19 queries over the MS MARCO mini collection (0.71 / 0.55 synthetic against
0.71 / 0.54 real; `--calibrate SHARDS QUERIES.npy` prints both); its top-1 is less separated (0.75
against 0.80), which makes it harder, not easier, for approximate search. Recall on synthetic data
depends on that generator; the real-data check is tests/test_slow.py (DL19 over the mini collection).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import environment, save

from fastmarco import ShardSet, ShardWriter
from fastmarco.cli.progress import Reporter
from fastmarco.search.backends import VectorIndex
from fastmarco.search.exact import search_shards
from fastmarco.search.faiss_kinds import default_nprobe
from fastmarco.search.index import IndexManifest, build_index, describe_factory, plan_index
from fastmarco.search.kinds import kind_names

PROFILE = Path(__file__).with_name("msmarco_profile.json")
LATENT = 96
ROWS_PER_TOPIC = 100  # the mini collection holds ~100 candidate passages per DL19 query
# the spread of rows around their topic and the isotropic noise, relative to the topic-centre norm
SPREAD, NOISE = 0.9, 0.55


class Generator:
    """Deterministic synthetic embeddings: rows and queries come from the same distribution."""

    def __init__(self, rows: int, dim: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.basis = rng.standard_normal((LATENT, dim)).astype(np.float32) / np.sqrt(LATENT)
        self.topics = rng.standard_normal((max(64, rows // ROWS_PER_TOPIC), LATENT)).astype(np.float32)
        self.mean = rng.standard_normal(dim).astype(np.float32) * (0.6 / np.sqrt(dim))  # anisotropy

    def sample(self, rows: int, rng: np.random.Generator) -> np.ndarray:
        topic = self.topics[rng.integers(0, len(self.topics), size=rows)]
        latent = topic + SPREAD * rng.standard_normal((rows, LATENT), dtype=np.float32)
        x = latent @ self.basis
        x += NOISE * np.sqrt(LATENT / self.dim) * rng.standard_normal((rows, self.dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        x += self.mean
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x


def write_synthetic_shards(directory: Path, rows: int, dim: int, rows_per_shard: int) -> None:
    generator = Generator(rows, dim)
    rng = np.random.default_rng(1)
    with ShardWriter(
        directory, dim=dim, dtype="fp16", rows_per_shard=rows_per_shard, metadata={"synthetic": True}
    ) as writer:
        for start in range(0, rows, 100_000):
            count = min(100_000, rows - start)
            writer.add(generator.sample(count, rng), np.arange(start, start + count, dtype=np.int64))
            print(f"\r  wrote {start + count:,}/{rows:,} rows", end="", flush=True)
    print()


def query_texts(count: int, seed: int = 0) -> list[str]:
    """MS MARCO-length queries (3 to 10 words) from the profile's word frequencies."""
    profile = json.loads(PROFILE.read_text())
    words = [w for w, _ in profile["words"]]
    weights = np.array([c for _, c in profile["words"]], dtype=np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(words), size=(count, 10), p=weights / weights.sum())
    return [" ".join(words[i] for i in row[: rng.integers(3, 11)]).lower() for row in picks]


def recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    hits = [len(set(f[:k].tolist()) & set(t[:k].tolist())) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits) / k)


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.array(samples) * 1e3, q))


def score_profile(shard_set: ShardSet, queries: np.ndarray) -> dict[str, float]:
    scores, _ = search_shards(shard_set, queries, 100)
    return {f"top{k}": float(scores[:, k - 1].mean()) for k in (1, 10, 100)}


def bench_kind(
    kind: str, shards: Path, workdir: Path, queries: np.ndarray, truth: np.ndarray, args: argparse.Namespace
) -> dict[str, Any]:
    plan = plan_index(shards, kind)  # type: ignore[arg-type]
    print(f"[{kind}] {plan.describe()}", flush=True)
    target = workdir / f"index-{kind}"
    if args.reuse and (target / "index.json").is_file():
        manifest = IndexManifest.load(target)
        build_seconds = manifest.build["seconds"]
        print(f"  reusing {target} (built in {build_seconds:.0f} s)", flush=True)
    else:
        started = time.perf_counter()
        notes = Reporter(bars=False)
        manifest = build_index(shards, target, kind=kind, overwrite=True, progress=notes)
        build_seconds = time.perf_counter() - started
    nlist = describe_factory(manifest.factory, manifest.dim).nlist
    nprobe = args.nprobe or default_nprobe(nlist)
    index = VectorIndex.open(target, nprobe=nprobe)
    result: dict[str, Any] = {
        "factory": manifest.factory,
        "build_seconds": build_seconds,
        "index_bytes": manifest.build["index_bytes"],  # 0 for flat: it searches the shards
        "plan": {"ram_bytes": plan.ram_bytes, "disk_bytes": plan.disk_bytes, "seconds": plan.seconds},
        "nprobe": nprobe,
        "ef_search": manifest.ef_search,
        "refine": manifest.refine,
    }
    rows10 = index.search(queries, 10).rows
    rows100 = index.search(queries, 100).rows
    result["recall@10"] = recall(rows10, truth, 10)
    result["recall@100"] = recall(rows100, truth, 100)
    if manifest.refine:
        plain = index.search(queries, 10, refine=0).rows
        result["recall@10_without_refine"] = recall(plain, truth, 10)
    started = time.perf_counter()
    index.search(queries, 10)
    result["batch_qps"] = len(queries) / (time.perf_counter() - started)
    result.update(single_query_latency(index, queries, args))
    if nprobe:
        result["nprobe_sweep"] = nprobe_sweep(target, nlist, queries, truth)
    print(f"  {json.dumps({k: v for k, v in result.items() if k != 'plan'})}", flush=True)
    return result


def nprobe_sweep(target: Path, nlist: int, queries: np.ndarray, truth: np.ndarray) -> list[dict[str, float]]:
    """Recall and speed against the number of IVF lists probed (refine as built)."""
    rows = []
    for probes in (p for p in (32, 64, 128, 256, 512, 1024, 2048) if p <= nlist):
        index = VectorIndex.open(target, nprobe=probes)
        started = time.perf_counter()
        found10 = index.search(queries, 10).rows
        qps = len(queries) / (time.perf_counter() - started)
        found100 = index.search(queries, 100).rows
        single = []
        for i in range(100):
            started = time.perf_counter()
            index.search(queries[i : i + 1], 10)
            single.append(time.perf_counter() - started)
        rows.append(
            {
                "nprobe": probes,
                "recall@10": recall(found10, truth, 10),
                "recall@100": recall(found100, truth, 100),
                "batch_qps": qps,
                "search_p50_ms": percentile_ms(single, 50),
            }
        )
        print(f"  nprobe {probes}: {rows[-1]}", flush=True)
    return rows


def single_query_latency(index: VectorIndex, queries: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """One query at a time, as a search box sends them: encode the text (if a model), then search."""
    encoder = None
    if args.model:
        from fastmarco.model.encoder import Encoder

        encoder = Encoder.open(args.model, device=args.device, max_batch=1, busy_wait=False)  # as Engine
    texts = query_texts(args.latency_queries)
    total, search_only = [], []
    for i, text in enumerate(texts):
        started = time.perf_counter()
        if encoder is not None:
            vector = encoder.encode([text])
            # a model of another width than the synthetic index: its encoding time still counts
            query = vector if vector.shape[1] == index.shard_set.dim else queries[i % len(queries)][None]
        else:
            query = queries[i % len(queries)][None]
        searched = time.perf_counter()
        index.search(query, 10)
        done = time.perf_counter()
        total.append(done - started)
        search_only.append(done - searched)
    return {
        **latency_summary(total, search_only),
        "query_encoding": None if encoder is None else str(args.model),
    }


def latency_summary(total: list[float], search_only: list[float]) -> dict[str, Any]:
    """p50 / p99 in ms of one-query latencies, with encoding (`total`) and of the search alone."""
    return {
        "latency_ms": {"p50": percentile_ms(total, 50), "p99": percentile_ms(total, 99)},
        "search_latency_ms": {"p50": percentile_ms(search_only, 50), "p99": percentile_ms(search_only, 99)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--kinds", default="flat,hnsw,opq-ivfpq")
    parser.add_argument("--queries", type=int, default=1000, help="for recall and batch throughput")
    parser.add_argument("--latency-queries", type=int, default=300)
    parser.add_argument("--model", help="exported model directory whose query encoding is timed")
    parser.add_argument("--device", default="cpu", help="device for query encoding")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fastmarco-bench-query"))
    parser.add_argument("--rows-per-shard", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the shards and indexes in --workdir")
    parser.add_argument("--reuse", action="store_true", help="reuse indexes a --keep run left in --workdir")
    parser.add_argument("--nprobe", type=int, help="IVF lists probed (default: fastmarco's default)")
    parser.add_argument("--label")
    parser.add_argument("--calibrate", nargs=2, metavar=("SHARDS", "QUERIES_NPY"))
    args = parser.parse_args()

    generator = Generator(args.rows, args.dim)
    queries = generator.sample(args.queries, np.random.default_rng(2))
    if args.calibrate:
        real = ShardSet.open(args.calibrate[0])
        real_queries = np.load(args.calibrate[1]).astype(np.float32)
        small = Generator(len(real), real.dim)
        print("real     ", score_profile(real, real_queries))
        with_real_shape = args.workdir / "calibrate"
        shutil.rmtree(with_real_shape, ignore_errors=True)
        write_synthetic_shards(with_real_shape, len(real), real.dim, args.rows_per_shard)
        synthetic_queries = small.sample(len(real_queries), np.random.default_rng(2))
        print("synthetic", score_profile(ShardSet.open(with_real_shape), synthetic_queries))
        return

    kinds = [k.strip() for k in args.kinds.split(",")]
    unknown = set(kinds) - set(kind_names())
    if unknown:
        parser.error(f"--kinds: unknown {sorted(unknown)}; choose from {list(kind_names())}")
    shards = args.workdir / f"shards-{args.rows}x{args.dim}"
    if not (shards / "manifest.json").is_file():
        shutil.rmtree(shards, ignore_errors=True)
        print(f"writing {args.rows:,} x {args.dim} synthetic embeddings to {shards}", flush=True)
        write_synthetic_shards(shards, args.rows, args.dim, args.rows_per_shard)
    shard_set = ShardSet.open(shards)
    started = time.perf_counter()
    _, truth = search_shards(shard_set, queries, 100)
    exact_seconds = time.perf_counter() - started
    body: dict[str, Any] = {
        "rows": args.rows,
        "dim": args.dim,
        "queries": args.queries,
        "latency_queries": args.latency_queries,
        "exact_search_batch_qps": args.queries / exact_seconds,
        "score_profile": score_profile(shard_set, queries[:200]),
        "kinds": {},
        "environment": environment(
            ["fastmarco", "faiss-cpu", "faiss-gpu-cu12", "onnxruntime", "onnxruntime-gpu"]
        ),
    }
    for kind in kinds:
        body["kinds"][kind] = bench_kind(kind, shards, args.workdir, queries, truth, args)
        if not args.keep:
            shutil.rmtree(args.workdir / f"index-{kind}", ignore_errors=True)
    label = args.label or f"{args.rows}x{args.dim}"
    print(
        f"\n{'kind':<10} {'build s':>8} {'size MB':>8} {'qps':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'R@10':>6} {'R@100':>6}"
    )
    for kind, r in body["kinds"].items():
        print(
            f"{kind:<10} {r['build_seconds']:>8.1f} {r['index_bytes'] / 1e6:>8.0f} {r['batch_qps']:>8.1f} "
            f"{r['latency_ms']['p50']:>7.2f} {r['latency_ms']['p99']:>7.2f} "
            f"{r['recall@10']:>6.3f} {r['recall@100']:>6.3f}"
        )
    print(f"saved {save(f'query_{label}', body)}")
    if not args.keep:
        shutil.rmtree(shards, ignore_errors=True)


if __name__ == "__main__":
    main()
