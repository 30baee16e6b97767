"""`fastmarco eval` (one run, or several compared), `fastmarco fuse`, `bm25` and `rerank`."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import click

from fastmarco.cli.app import DEVICE, EXISTING_FILE, FC, POSITIVE, corpus_format_option, main, runtime_option
from fastmarco.errors import InputError
from fastmarco.eval.compare import FORMATS, Format
from fastmarco.eval.fusion import METHODS, NORMS, Method, Norm
from fastmarco.eval.metrics import METRICS
from fastmarco.eval.significance import CORRECTIONS, TESTS, Correction, Test


def _named_run(value: str) -> tuple[str, str]:
    """`NAME=PATH`, or a bare PATH named by its file name."""
    name, equals, path = value.partition("=")
    if not equals:
        path, name = value, Path(value).name
    if not name or not path:
        raise InputError(f"--run {value!r}: expected NAME=PATH or PATH")
    if not Path(path).is_file():
        raise InputError(f"--run {value!r}: {path} is not a file")
    return name, path


def named_runs_option(help: str) -> Callable[[FC], FC]:
    """`--run [NAME=]PATH`, repeatable, parsed into (name, path) pairs."""
    return click.option(
        "--run",
        "named",
        required=True,
        multiple=True,
        metavar="[NAME=]PATH",
        help=help,
        callback=lambda ctx, param, values: [_named_run(value) for value in values],
    )


@main.command("eval")
@click.option(
    "--qrels", required=True, type=EXISTING_FILE, help="TREC, MS MARCO or BEIR (qrels/SPLIT.tsv) qrels."
)
@named_runs_option("Run file; repeat it to compare runs (a table with significance tests).")
@click.option("--metrics", default=",".join(METRICS), show_default=True, help="Comma-separated metrics.")
@click.option(
    "--relevance-level",
    default=1,
    show_default=True,
    help="Lowest relevant grade for MRR, recall and MAP (TREC-DL passage: 2).",
)
@click.option(
    "--include-missing", is_flag=True, help="Judged queries absent from the run score 0 (trec_eval -c)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, per-query values included.")
@click.option("--baseline", help="Compared runs: test every other run against this one (its NAME).")
@click.option("--pairwise", is_flag=True, help="Compared runs: test every pair of runs.")
@click.option("--test", type=click.Choice(TESTS), default="paired-t", show_default=True)
@click.option(
    "--correction", type=click.Choice(CORRECTIONS), default="holm", show_default=True, help="Per metric."
)
@click.option(
    "--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05, show_default=True
)
@click.option("--permutations", type=POSITIVE, default=10_000, show_default=True, help="Fisher's test.")
@click.option("--seed", type=int, default=42, show_default=True, help="Fisher's test.")
@click.option(
    "--format", "table_format", type=click.Choice(FORMATS), default=None, help="Compared runs' table [table]."
)
def eval_command(
    qrels: str,
    named: list[tuple[str, str]],
    metrics: str,
    relevance_level: int,
    include_missing: bool,
    as_json: bool,
    baseline: str | None,
    pairwise: bool,
    test: Test,
    correction: Correction,
    alpha: float,
    permutations: int,
    seed: int,
    table_format: Format | None,
) -> None:
    """Evaluate a run: MRR@10 (official MS MARCO), nDCG@10, recall and MAP (trec_eval).

    With several --run NAME=PATH (or --baseline, --pairwise, --format), compare them: every judged
    query counts (absent ones score 0, as trec_eval -c) and differences are tested for significance.
    """
    from fastmarco.eval.compare import compare_runs, render
    from fastmarco.eval.metrics import evaluate, rank_columns
    from fastmarco.store.formats import load_qrels, read_run_columns

    judged = load_qrels(qrels)
    metric_names = [m.strip() for m in metrics.split(",") if m.strip()]
    names = [name for name, _ in named]
    if len(set(names)) != len(names):
        raise InputError(
            f"two runs are named {next(n for n in names if names.count(n) > 1)!r}: use NAME=PATH"
        )
    if len(named) > 1 or baseline or pairwise or table_format:
        if include_missing:
            raise InputError("--include-missing is always on when runs are compared")
        runs = {name: rank_columns(read_run_columns(path), source=path) for name, path in named}
        comparison = compare_runs(
            judged,
            runs,
            metric_names,
            baseline=baseline,
            pairwise=pairwise,
            test=test,
            permutations=permutations,
            seed=seed,
            correction=correction,
            alpha=alpha,
            relevance_level=relevance_level,
        )
        click.echo(render(comparison, "json" if as_json else table_format or "table"), nl=False)
        return
    run_path = named[0][1]
    run = rank_columns(read_run_columns(run_path), source=run_path)
    if run and not any(qid in run for qid in judged):
        raise InputError(
            f"{run_path}: none of its {len(run):,} queries (e.g. {', '.join(sorted(run)[:3])}) is judged in "
            f"{qrels} (e.g. {', '.join(sorted(judged)[:3])}): are they of the same topic set?"
        )
    result = evaluate(
        judged, run, metric_names, relevance_level=relevance_level, include_missing=include_missing
    )
    if as_json:
        click.echo(json.dumps({**result.__dict__}, indent=2))
        return
    click.echo(
        f"queries: {result.queries_in_qrels} judged, {result.queries_in_run} in the run, "
        f"{result.queries_evaluated} evaluated (MRR averages over all {result.queries_in_qrels} judged)"
    )
    for name, value in result.metrics.items():
        click.echo(f"{name:<12} {value:.4f}")


@main.command()
@named_runs_option("A run to fuse (at least two).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Run file to write (TREC).")
@click.option("--method", type=click.Choice(METHODS), default="rrf", show_default=True)
@click.option("--rrf-k", type=click.IntRange(min=0), default=60, show_default=True)
@click.option(
    "--norm", type=click.Choice(NORMS), default="min-max", show_default=True, help="wsum: per query."
)
@click.option("--weights", help="wsum: comma-separated, one per run (default 1 each: CombSUM).")
@click.option("-k", "depth", type=POSITIVE, default=1000, show_default=True, help="Passages per query.")
def fuse(
    named: list[tuple[str, str]],
    out: str,
    method: Method,
    rrf_k: int,
    norm: Norm,
    weights: str | None,
    depth: int,
) -> None:
    """Fuse runs: reciprocal rank fusion, or a weighted sum of normalised scores (ranx's definitions)."""
    from fastmarco.eval.fusion import NamedRun
    from fastmarco.eval.fusion import fuse as fuse_runs
    from fastmarco.store.formats import read_run_columns, write_run

    try:
        weight_values = [float(w) for w in weights.split(",")] if weights else None
    except ValueError:
        raise InputError(f"--weights {weights!r}: expected comma-separated numbers") from None
    runs = [NamedRun(path, read_run_columns(path)) for _, path in named]
    entries = fuse_runs(runs, method=method, rrf_k=rrf_k, norm=norm, weights=weight_values, depth=depth)
    lines = write_run(out, entries, "trec", tag=f"fastmarco-{method}")
    click.echo(
        f"fused {len(runs)} runs ({method}); wrote {lines:,} lines for "
        f"{len({e.qid for e in entries}):,} queries to {out}"
    )


@main.command()
@click.option(
    "--collection", required=True, type=EXISTING_FILE, help="collection.tsv or BEIR corpus.jsonl (detected)."
)
@click.option(
    "--queries", required=True, type=EXISTING_FILE, help="queries.tsv or BEIR queries.jsonl (detected)."
)
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="Run file to write (TREC format)."
)
@corpus_format_option
@click.option("-k", "depth", type=POSITIVE, default=1000, show_default=True, help="Passages per query.")
def bm25(collection: str, queries: str, out: str, corpus_format: str, depth: int) -> None:
    """BM25 baseline run (bm25s; Lucene BM25, k1 0.9, b 0.4, English stopwords and stemming)."""
    from fastmarco.eval.bm25 import bm25_run
    from fastmarco.store.formats import load_queries, write_run

    run = bm25_run(
        collection, load_queries(queries), depth, show_progress=sys.stderr.isatty(), format=corpus_format
    )
    lines = write_run(out, run.entries, "trec", tag="fastmarco-bm25")
    click.echo(f"wrote {lines:,} lines for {len({e.qid for e in run.entries}):,} queries to {out}")
    if run.unmatched:
        shown = ", ".join(run.unmatched[:10]) + (", ..." if len(run.unmatched) > 10 else "")
        click.echo(
            f"note: {len(run.unmatched):,} queries retrieved nothing (only stopwords, or no word the "
            f"collection has) and have no line in the run: {shown}",
            err=True,
        )


@main.command()
@click.option(
    "--model",
    required=True,
    type=click.Path(file_okay=False),
    help="Exported bi-encoder or cross-encoder directory.",
)
@click.option("--run", "run_path", required=True, type=EXISTING_FILE, help="Candidates.")
@click.option(
    "--queries", required=True, type=EXISTING_FILE, help="queries.tsv or BEIR queries.jsonl (detected)."
)
@click.option(
    "--collection", required=True, type=EXISTING_FILE, help="collection.tsv or BEIR corpus.jsonl (detected)."
)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Run file to write.")
@click.option(
    "--format", "run_format", type=click.Choice(["trec", "msmarco"]), default="trec", show_default=True
)
@corpus_format_option
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@runtime_option
def rerank(
    model: str,
    run_path: str,
    queries: str,
    collection: str,
    out: str,
    run_format: str,
    corpus_format: str,
    device: str,
    runtime: str,
) -> None:
    """Re-rank a candidate run with a bi-encoder or a cross-encoder (the TREC-DL re-ranking protocol)."""
    from fastmarco.engine import Reranker
    from fastmarco.eval.metrics import rank_columns
    from fastmarco.pipelines.rerank import rerank as rerank_run
    from fastmarco.store.formats import load_queries, read_run_columns, write_run
    from fastmarco.store.passages import PassageStore

    reranker = Reranker.open(model, device=device, runtime=runtime)  # type: ignore[arg-type]  # click.Choice
    candidates = rank_columns(read_run_columns(run_path), source=run_path)
    with PassageStore.open(collection, format=corpus_format) as passages:
        entries = rerank_run(reranker, candidates, load_queries(queries), passages)
    lines = write_run(out, entries, run_format, tag="fastmarco-rerank")  # type: ignore[arg-type]
    click.echo(f"re-ranked {len(candidates):,} queries on {reranker.device}; wrote {lines:,} lines to {out}")
