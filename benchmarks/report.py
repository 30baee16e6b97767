"""Every benchmark table in the README and the docs, rendered from the committed JSON results in
benchmarks/results (never typed by hand), and the plots redrawn from the same JSON.

    python benchmarks/report.py          # rewrite the tables in README.md and docs/
    python benchmarks/report.py --check  # exit 1 if a page differs (tests/test_readme.py runs it)
    python benchmarks/report.py --plots  # redraw docs/*.png from the JSON too (needs matplotlib)

Each table sits between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in one of PAGES; every figure
line states the machine (CPU and its flags where recorded) and the date of its run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGES = (ROOT / "README.md", ROOT / "docs" / "benchmarks.md", ROOT / "docs" / "wheels.md")
EXACT_SEARCH_FILES = ("exact_search_1000000x768_avx2.json", "exact_search_1000000x768_avx512.json")
# CPU encoding per CPU family and vendor; the first is the headline's
ENCODE_CPU_FILES = (
    "encode_cpu_avx512_intel.json",
    "encode_cpu_avx512_intel_emulated-avx512_core_bf16.json",  # the OpenVINO systems without AMX
    "encode_cpu_avx512_intel_emulated-avx2.json",  # the OpenVINO systems on AVX2 alone
    "encode_cpu_avx512_amd.json",
)
SERVE_PEERS_BF16_FILES = (
    "serve_peers_avx512_bf16.json",
    "serve_peers_avx512_bf16_infinity-torch-bfloat16.json",
)
RERANK_CPU_FILES = (
    "rerank_cpu_avx512_intel.json",
    "rerank_cpu_avx512_intel_emulated-avx512_core_bf16.json",
    "rerank_cpu_avx512_intel_emulated-avx2.json",
)
SCALE_FILES = ("scale_8841823x384.json", "scale_8841823x768.json")
QUERY_HNSW_FILES = (
    ("1M x 384, all-MiniLM-L6-v2", "`--int8 --int8-attention`", "query_cpu-int8-attention-1000000x384.json"),
    ("1M x 384, all-MiniLM-L6-v2", "`--int8`", "query_cpu-int8-1000000x384.json"),
    ("1M x 384, all-MiniLM-L6-v2", "fp32", "query_cpu-fp32-1000000x384.json"),
    (
        "1M x 768, DistilBERT-base shape",
        "`--int8 --int8-attention`",
        "query_cpu-int8-attention-1000000x768.json",
    ),
    ("1M x 768, DistilBERT-base shape", "`--int8`", "query_cpu-int8-1000000x768.json"),
    ("1M x 768, DistilBERT-base shape", "fp32", "query_cpu-fp32-1000000x768.json"),
)


def _load(name: str, missing_ok: bool = False) -> dict[str, Any]:
    path = RESULTS / name
    if missing_ok and not path.is_file():
        return {}
    body: dict[str, Any] = json.loads(path.read_text())
    return body


def machine(body: dict[str, Any]) -> str:
    """Where and when a result was measured, from its `environment`."""
    environment = body["environment"]
    flags = environment.get("cpu_flags")
    cpu = f"{environment['cpu']} ({', '.join(flags)})" if flags else environment["cpu"]
    return f"{environment['cpus']} cores, {cpu}, {environment['date'][:10]}"


def _ms(value: float) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:,.1f}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _gb(value: float | None) -> str:
    return "—" if value is None else f"{value / 1e9:,.2f} GB"


def _cell(figures: dict[str, Any], *path: str, fmt: str = "{:,.0f}") -> str:
    value: Any = figures
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return "—"
        value = value[key]
    return fmt.format(value)


def scale_table(body: dict[str, Any]) -> str:
    """One row per kind of a bench_scale.py result."""
    environment = body["environment"]
    lines = [
        f"{body['rows']:,} x {body['dim']} synthetic rows "
        f"(`benchmarks/results/scale_{body['rows']}x{body['dim']}.json`), {environment['cpus']} cores, "
        f"{environment['cpu']} "
        f"({', '.join(environment.get('cpu_flags', []))}); one query's latency includes encoding it with "
        f"`{Path(body['model']).name}`; recall against exact search, {body['queries']:,} queries.",
        "",
        "| kind | factory | build | peak build RSS | on disk | serving RSS | open cold / warm s | batch q/s "
        "| p50 / p99 ms | search p50 ms | recall@10 | recall@100 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, figures in body["kinds"].items():
        build, measure = figures.get("build", {}), figures.get("measure", {})
        if "not_measured" in measure or build.get("fits") is False:
            why = measure.get("not_measured") or build.get("why", "")
            lines.append(f"| {kind} | {build.get('factory', '—')} | {why} |" + " |" * 9)
            continue
        seconds = build.get("build_seconds")
        base = kind.removeprefix("plain-")
        opened = measure.get("open_seconds", {})
        cold = opened.get("cold", opened.get("first"))
        lines.append(
            "| "
            + " | ".join(
                [
                    kind,
                    f"`{build['factory']}`" if "factory" in build else f"{base}, refine 0",
                    "—" if seconds is None else f"{seconds:,.0f} s",
                    _gb(build.get("peak_build_rss_bytes")),
                    _gb(build.get("index_bytes")),
                    _gb(measure.get("serving_rss_anon_bytes")),
                    f"{'—' if cold is None else f'{cold:.2f}'} / {opened.get('warm', 0):.2f}",
                    _cell(measure, "batch_qps"),
                    f"{_cell(measure, 'latency_ms', 'p50', fmt='{:.1f}')} / "
                    f"{_cell(measure, 'latency_ms', 'p99', fmt='{:.1f}')}",
                    _cell(measure, "search_latency_ms", "p50", fmt="{:.1f}"),
                    _cell(measure, "recall@10", fmt="{:.3f}"),
                    _cell(measure, "recall@100", fmt="{:.3f}"),
                ]
            )
            + " |"
        )
    goals = body.get("goals")
    if goals:
        met = ", ".join(goals["kinds_meeting_all"]) or "no kind"
        missed = "; ".join(
            f"{goal} {best['value']:,.4g} ({best['kind']}) against {best['target']:,.4g}"
            for goal, best in goals["best"].items()
            if not best["met"]
        )
        lines += ["", f"Against the goals ({met} meets all of them; best missed: {missed or 'none'}):", ""]
        lines += [f"- {line}" for line in goals["bounds"]]
    published = body.get("pyserini_published_bytes", {})
    if published:
        sizes = "; ".join(f"{name} {_gb(size)}" for name, size in published.items())
        lines += ["", f"For scale, Pyserini's prebuilt indexes of the real corpus: {sizes}."]
    return "\n".join(lines)


def exact_search_table(body: dict[str, Any], name: str) -> str:
    lines = [
        f"`benchmarks/results/{name}`: {machine(body)}; "
        f"top-{body['k']} "
        f"inner product over {body['rows']:,} x {body['dim']}, queries/s; fastmarco reads fp16 from "
        f"{body['shards']} memory-mapped shards, faiss {body['environment']['packages']['faiss-cpu']} "
        f"`IndexFlatIP` and NumPy {body['environment']['packages']['numpy']} hold fp32.",
        "",
        "| queries per call | fastmarco fp16 | faiss IndexFlatIP fp32 | NumPy fp32 | fastmarco vs faiss | "
        "top-k overlap |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in body["results"]:
        lines.append(_row([
            str(r["batch"]), f"{r['fastmarco_qps']:,.1f}", f"{r['faiss_flat_ip_qps']:,.1f}",
            f"{r['numpy_qps']:,.1f}", f"{r['speedup_vs_faiss']:.2f}x", f"{r['topk_overlap_with_faiss']:.3f}",
        ]))  # fmt: skip
    return "\n".join(lines)


def builds_table(body: dict[str, Any], name: str) -> str:
    """fastmarco's search from the portable and the -march=native wheel, side by side."""
    builds = body["portable_vs_native"]
    portable, native = builds["builds"]["portable"], builds["builds"]["native"]
    lines = [
        f"`benchmarks/results/{name}`: {machine(body)}; {body['rows']:,} x {body['dim']} fp16, "
        f"top-{body['k']}, queries/s, best of {builds['rounds']} interleaved rounds; both builds ran the "
        f"`{portable['variant']}` kernels.",
        "",
        "| queries per call | portable build | `-march=native` build | portable / native |",
        "|---:|---:|---:|---:|",
    ]
    for batch, ratio in builds["portable_vs_native"].items():
        lines.append(_row([
            batch, f"{portable['qps'][batch]:,.1f}", f"{native['qps'][batch]:,.1f}", f"{ratio:.3f}",
        ]))  # fmt: skip
    return "\n".join(lines)


def query_table(body: dict[str, Any]) -> str:
    lines = [
        f"`benchmarks/results/query_cpu-{body['rows']}x{body['dim']}.json`: {machine(body)}; "
        f"{body['queries']:,} queries for recall, {body['latency_queries']:,} one at a time for latency.",
        "",
        "| kind | factory | build | index size | batch queries/s | p50 / p99 ms (with encoding) "
        "| search p50 ms | recall@10 | recall@100 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, k in body["kinds"].items():
        settings = ", ".join(
            f"{name} {k[key]}" for name, key in (("efSearch", "ef_search"), ("nprobe", "nprobe"),
                                                 ("refine", "refine")) if k.get(key)
        )  # fmt: skip
        lines.append(_row([
            kind, f"`{k['factory']}`" + (f" ({settings})" if settings else ""),
            f"{k['build_seconds']:,.0f} s",
            _gb(k["index_bytes"]), f"{k['batch_qps']:,.0f}",
            f"{_ms(k['latency_ms']['p50'])} / {_ms(k['latency_ms']['p99'])}",
            _ms(k["search_latency_ms"]["p50"]), f"{k['recall@10']:.3f}", f"{k['recall@100']:.3f}",
        ]))  # fmt: skip
    return "\n".join(lines)


def query_hnsw_table() -> str:
    first = _load(QUERY_HNSW_FILES[0][2])
    lines = [
        f"`benchmarks/results/query_cpu-*-1000000x*.json`: {machine(first)} (each row's own run below the "
        "table); HNSW32, one query at a time with its encoding.",
        "",
        "| rows x dim, query model | export | p50 / p99 ms with encoding | search p50 ms | recall@10 "
        "| recall@100 | measured |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for shape, export, name in QUERY_HNSW_FILES:
        body = _load(name)
        k = body["kinds"]["hnsw"]
        lines.append(_row([
            shape, export, f"{k['latency_ms']['p50']:.2f} / {k['latency_ms']['p99']:.2f}",
            f"{k['search_latency_ms']['p50']:.2f}", f"{k['recall@10']:.3f}", f"{k['recall@100']:.3f}",
            body["environment"]["date"][:16].replace("T", " "),
        ]))  # fmt: skip
    return "\n".join(lines)


def default_batch(system: str) -> str:
    """What a system without a recorded batch size ran at: fastmarco its token budget, the older
    runs' sentence-transformers peers batch 32."""
    return "token budget" if system.startswith("fastmarco") else "32"


def _speed_cell(figures: dict[str, Any]) -> str:
    """Passages (or pairs) a second, the median, with the rounds' range where there were several."""
    speed = f"{figures['passages_per_second']:,.1f}"
    rounds = figures.get("passages_per_second_rounds", [])
    return speed + (f" ({min(rounds):,.0f} to {max(rounds):,.0f})" if len(rounds) > 1 else "")


def _versus_best_peer(body: dict[str, Any], unit: str) -> str:
    ratios = ", ".join(f"{r:.2f}x" for r in body["best_fastmarco_vs_best_peer_rounds"])
    return (
        f"Best fastmarco system ({body['best_fastmarco']}) against the best peer ({body['best_peer']}), "
        f"{unit} by round: {ratios}."
    )


# The CPU family each `--emulate-isa` name stands for
EMULATED_FAMILIES = {
    "AVX512_CORE_BF16": "VNNI and bf16 but no AMX, as AMD Zen 4",
    "AVX2": "AVX2 only: no AVX-512, no VNNI, no bf16, as AMD Zen 2 and 3",
}


def emulation(body: dict[str, Any]) -> str:
    """How a result's CPU family was emulated, if it was: CPUID masked for every system (results that
    record what CPUID showed), or, in older results, oneDNN capped for the OpenVINO systems alone."""
    isa = body.get("emulated_isa")
    if not isa:
        return ""
    family = EMULATED_FAMILIES.get(isa, "an older CPU family")
    if "cpu_features_seen" in body:
        return f", emulating {isa} (`--emulate-isa`: {family}; CPUID masked for every system)"
    return f", oneDNN capped at {isa} (`--emulate-isa`: {family}, emulated; the OpenVINO systems only)"


def encode_cpu_table(body: dict[str, Any], name: str) -> str:
    rounds = body.get("rounds", 1)
    lines = [
        f"`benchmarks/results/{name}`: {machine(body)}{emulation(body)}"
        + f"; {body['passages']:,} passages (throughput), "
        f"{body['queries']:,} queries one at a time"
        + (f"; the median of {rounds} interleaved rounds (range in brackets)." if rounds > 1 else "."),
        "",
        "| system | passages/s | one query p50 / p99 ms | DL19 nDCG@10 | batch |",
        "|---|---:|---:|---:|---:|",
    ]
    for system, s in body["systems"].items():
        lines.append(_row([
            system, _speed_cell(s), f"{s['query_p50_ms']:.2f} / {s['query_p99_ms']:.2f}",
            f"{s['dl19_rerank_ndcg10']:.4f}" if "dl19_rerank_ndcg10" in s else "not run",
            str(s.get("batch_size") or default_batch(system)),
        ]))  # fmt: skip
    if "best_fastmarco_vs_best_peer" in body:
        outside = body.get("outside_quality_band")
        lines += [
            "",
            (
                f"Not counted, nDCG@10 more than {body['quality_band']['ndcg10_within']} from "
                f"{body['quality_band']['reference']}'s: {', '.join(outside)}. "
                if outside
                else ""
            )
            + _versus_best_peer(body, "passages/s")
            + " What `runtime=auto` picks here: "
            + ", ".join(f"{export} export: {runtime}" for export, runtime in body["auto_runtime"].items())
            + ".",
        ]
    elif "best_fastmarco_vs_best_sentence_transformers" in body:
        ratio = body["best_fastmarco_vs_best_sentence_transformers"]
        lines += ["", f"Best fastmarco export against the best sentence-transformers backend: {ratio:.2f}x."]
    return "\n".join(lines)


def rerank_cpu_table(body: dict[str, Any], name: str) -> str:
    lines = [
        f"`benchmarks/results/{name}`: {machine(body)}{emulation(body)}; {body['model']}; "
        f"{body['passages']:,} DL19 BM25 "
        f"(query, passage) pairs (throughput), {body['queries']} queries' top-{body['candidates_per_query']} "
        f"one query at a time; the median of {body['rounds']} interleaved rounds (range in brackets).",
        "",
        "| system | pairs/s | one query's top-20 p50 / p99 ms | max abs. difference to "
        "`CrossEncoder.predict` | batch |",
        "|---|---:|---:|---:|---:|",
    ]
    for system, s in body["systems"].items():
        lines.append(_row([
            system, _speed_cell(s), f"{s['query_p50_ms']:.2f} / {s['query_p99_ms']:.2f}",
            f"{s['max_abs_diff_vs_cross_encoder_predict']:.2g}"
            if "max_abs_diff_vs_cross_encoder_predict" in s
            else "not run (no torch reference in this run: `--only`)",
            str(s.get("batch_size") or default_batch(system)),
        ]))  # fmt: skip
    lines += ["", _versus_best_peer(body, "pairs/s")]
    return "\n".join(lines)


def mine_table(body: dict[str, Any]) -> str:
    st = body["sentence-transformers"]["cold"]
    lines = [
        f"`benchmarks/results/mine-cold.json`: {machine(body)}; {body['inputs']['queries_asked']:,} queries "
        f"over {body['settings']['passages']:,} passages, depth {body['settings']['depth']}, "
        f"{body['settings']['num_negatives']} negatives, "
        f"relative margin {body['settings']['relative_margin']}.",
        "",
        "| run (both models exported as) | sentence-transformers | fastmarco | speed-up | triplets "
        "| negatives shared with fp32 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, label in (("cold", "cold, fp32"), ("cold_int8", "cold, `--int8`"),
                       ("cold_int8_attention", "cold, `--int8 --int8-attention`")):  # fmt: skip
        run = body["fastmarco"][key]
        shared = run.get("negatives_shared_with_cold")
        lines.append(_row([
            label, f"{st['seconds']:,.1f} s",
            f"{run['seconds']:,.1f} s (encode {run['encode_seconds']:,.1f})", f"{body['speedup'][key]:.2f}x",
            f"{run['triplets']:,}", "" if shared is None else f"{shared:.0%}",
        ]))  # fmt: skip
    return "\n".join(lines)


def serve_table(body: dict[str, Any]) -> str:
    lines = [
        f"`benchmarks/results/serve_cpu.json`: {machine(body)}.",
        "",
        "| clients | fastmarco serve req/s | p50 / p99 ms | FastAPI + ST + faiss req/s | p50 / p99 ms "
        "| throughput |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for ours, theirs in zip(body["fastmarco"], body["baseline"], strict=True):
        lines.append(_row([
            str(ours["clients"]), f"{ours['requests_per_second']:,.1f}",
            f"{_ms(ours['p50_ms'])} / {_ms(ours['p99_ms'])}", f"{theirs['requests_per_second']:,.1f}",
            f"{_ms(theirs['p50_ms'])} / {_ms(theirs['p99_ms'])}",
            f"{body['speedup'][str(ours['clients'])]:.1f}x",
        ]))  # fmt: skip
    return "\n".join(lines)


def serve_peers_table(body: dict[str, Any], name: str) -> str:
    servers = body["servers"]
    export = body.get("fastmarco_export") or {"precision": "fp32", "runtime": "onnxruntime"}
    dtype = body.get("infinity_dtype") or "auto"
    lines = [
        f"`benchmarks/results/{name}`: {machine(body)}; {body['threads']} threads each, "
        f"{body['seconds_per_level']:.0f} s a level; fastmarco: both models exported {export['precision']}, "
        f"runtime {export['runtime']}; infinity: `--engine {body['infinity_engine']} --dtype {dtype}`; "
        "requests/s and p50 / p99 ms (— : no answer within the level's window; no baseline column value: "
        "not run).",
        "",
        "| route | clients | fastmarco | infinity | FastAPI baseline | fastmarco / infinity |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def cell(level: dict[str, Any] | None) -> str:
        if level is None or not level["requests"]:
            return "—"
        return f"{level['requests_per_second']:,.1f} ({_ms(level['p50_ms'])} / {_ms(level['p99_ms'])})"

    for route in servers["fastmarco"]:
        baseline = servers.get("baseline", {}).get(route) or [None] * len(servers["fastmarco"][route])
        for ours, inf, base in zip(servers["fastmarco"][route], servers["infinity"][route], baseline,
                                   strict=True):  # fmt: skip
            ratio = ours["requests_per_second"] / inf["requests_per_second"] if inf["requests"] else None
            lines.append(_row([
                route, str(ours["clients"]), cell(ours), cell(inf), cell(base),
                "—" if ratio is None else f"{ratio:.2f}x",
            ]))  # fmt: skip
    return "\n".join(lines)


def significance_table(body: dict[str, Any]) -> str:
    ours, ranx = body["fastmarco"], body["ranx"]
    return "\n".join([
        f"`benchmarks/results/significance_avx512.json`: {machine(body)}; {body['queries']:,} queries, "
        f"{body['systems']} systems ({body['pairs']} pairs), {body['permutations']:,} permutations.",
        "",
        "| step | fastmarco | ranx |",
        "|---|---:|---:|",
        _row(["Fisher randomization, all pairs", f"{ours['fisher_all_pairs_s']:.2f} s "
              f"(+{ours['fisher_compile_s']:.1f} s compile, once)",
              f"{ranx['fisher_all_pairs_projected_s']:.2f} s ({ranx['fisher_one_pair_s']:.2f} s a pair)"]),
        _row(["paired t-test, all pairs", f"{ours['paired_t_all_pairs_s']:.2f} s", ""]),
        _row(["RRF fusion", f"{ours['fuse_rrf_s']:.1f} s", f"{ranx['fuse_rrf_s']:.1f} s"]),
    ])  # fmt: skip


def headline() -> str:
    """The README's few figures, each with its machine and date, from the same JSON."""
    exact = _load(EXACT_SEARCH_FILES[0])
    sixteen = next(r for r in exact["results"] if r["batch"] == 16)
    encode = _load(ENCODE_CPU_FILES[0])
    peers = _load("serve_peers_avx512.json")
    mine = _load("mine-cold.json")
    significance = _load("significance_avx512.json")
    scale = _load("scale_8841823x384.json")
    binary = scale["kinds"]["binary"]
    rows = [
        ("exact top-10 over 1M x 768, 16 queries a call",
         f"{sixteen['speedup_vs_faiss']:.2f}x faiss `IndexFlatIP`", exact),
        ("CPU passage encoding, all-MiniLM-L6-v2",
         f"{encode['best_fastmarco_vs_best_peer']:.2f}x the best sentence-transformers backend "
         f"({encode['best_peer'].removeprefix('sentence-transformers ')})", encode),
        ("serving one-text embeddings, 32 clients",
         f"{peers['vs_infinity_at_32']['embeddings-1']:.2f}x infinity-emb's requests/s", peers),
        ("serving re-ranking of 20 documents, 32 clients",
         f"{peers['vs_infinity_at_32']['rerank-20']:.2f}x infinity-emb's requests/s", peers),
        ("hard-negative mining end to end, `--int8`",
         f"{mine['speedup']['cold_int8']:.2f}x `mine_hard_negatives`", mine),
        ("Fisher test, 6 pairs x 6,980 queries x 10,000 permutations",
         f"{significance['fastmarco']['fisher_all_pairs_s']:.2f} s (ranx: "
         f"{significance['ranx']['fisher_all_pairs_projected_s']:.1f} s)", significance),
        (f"{scale['rows']:,} x {scale['dim']} binary index, one query with its encoding",
         f"p50 {binary['measure']['latency_ms']['p50']:.1f} ms, "
         f"recall@10 {binary['measure']['recall@10']:.3f}, "
         f"{_gb(binary['build']['index_bytes'])} on disk", scale),
    ]  # fmt: skip
    lines = ["| what | fastmarco | machine, date |", "|---|---|---|"]
    for what, figure, body in rows:
        environment = body["environment"]
        lines.append(_row([what, figure, f"{environment['cpus']}-core {environment['cpu']}, "
                                         f"{environment['date'][:10]}"]))  # fmt: skip
    return "\n".join(lines)


def rendered() -> dict[str, str]:
    """Every table by its marker name."""
    tables: dict[str, str] = {
        "headline": headline(),
        "exact-search": "\n\n".join(
            exact_search_table(_load(name), name) for name in EXACT_SEARCH_FILES if (RESULTS / name).is_file()
        ),
        "query-1000000x768": query_table(_load("query_cpu-1000000x768.json")),
        "query-hnsw": query_hnsw_table(),
        "encode-cpu": "\n\n".join(
            encode_cpu_table(_load(name), name) for name in ENCODE_CPU_FILES if (RESULTS / name).is_file()
        ),
        "mine-cold": mine_table(_load("mine-cold.json")),
        "rerank-cpu": "\n\n".join(
            rerank_cpu_table(_load(name), name) for name in RERANK_CPU_FILES if (RESULTS / name).is_file()
        ),
        "serve": serve_table(_load("serve_cpu.json")),
        "serve-peers": serve_peers_table(_load("serve_peers_avx512.json"), "serve_peers_avx512.json"),
        "serve-peers-bf16": "\n\n".join(
            serve_peers_table(_load(name), name)
            for name in SERVE_PEERS_BF16_FILES
            if (RESULTS / name).is_file()
        ),
        "significance": significance_table(_load("significance_avx512.json")),
    }
    for name in SCALE_FILES:
        tables[name.removesuffix(".json").replace("_", "-")] = scale_table(_load(name))
    with_builds = [n for n in EXACT_SEARCH_FILES if "portable_vs_native" in _load(n, missing_ok=True)]
    if with_builds:
        tables["exact-search-builds"] = builds_table(_load(with_builds[-1]), with_builds[-1])
    return tables


def apply(text: str, tables: dict[str, str]) -> str:
    """`text` with every marked block it holds replaced by its table."""
    for name, table in tables.items():
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        if begin not in text:
            continue
        if end not in text:
            raise SystemExit(f"{begin} has no {end}")
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{begin}\n{table}\n{end}{tail}"
    return text


def unmarked_tables(text: str, tables: dict[str, str]) -> list[str]:
    """Table lines of a page outside every generated block: typed by hand, which is what must not be."""
    for name in tables:
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        if begin in text:
            head, rest = text.split(begin, 1)
            text = head + rest.split(end, 1)[1]
    return [line for line in text.splitlines() if line.startswith("|")]


def _bench_module(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec.loader.exec_module(module)
    return module


def plots() -> None:
    """Redraw every committed plot from its JSON with the benchmark's own plotting function."""
    for module_name, function, result, target in (
        ("bench_encode_cpu", "plot", ENCODE_CPU_FILES[0], "encode-cpu.png"),
        ("bench_serve", "plot", "serve_cpu.json", "serve-throughput.png"),
        ("bench_serve", "plot_peers", "serve_peers_avx512.json", "serve-peers.png"),
        ("bench_serve", "plot_peers", SERVE_PEERS_BF16_FILES[0], "serve-peers-bf16.png"),
    ):
        getattr(_bench_module(module_name), function)(_load(result), ROOT / "docs" / target)
    scale = _bench_module("bench_scale")
    for name in SCALE_FILES:
        scale.plot(_load(name), RESULTS / name.replace(".json", ".png"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a page is not up to date")
    parser.add_argument("--plots", action="store_true", help="redraw the plots from the JSON too")
    args = parser.parse_args()
    tables = rendered()
    stale = []
    for page in PAGES:
        current = page.read_text()
        wanted = apply(current, tables)
        if wanted != current:
            stale.append(page.relative_to(ROOT))
            if not args.check:
                page.write_text(wanted)
    if args.check and stale:
        print(f"stale benchmark tables in {', '.join(map(str, stale))}: run python benchmarks/report.py")
        sys.exit(1)
    if args.plots and not args.check:
        plots()


if __name__ == "__main__":
    main()
