"""`fastmarco eval`, `fastmarco bm25` and `fastmarco rerank`."""

from __future__ import annotations

import json
import sys

import click

from fastmarco.cli.app import DEVICE, EXISTING_FILE, POSITIVE, main
from fastmarco.errors import InputError
from fastmarco.eval.metrics import METRICS


@main.command("eval")
@click.option("--qrels", required=True, type=EXISTING_FILE, help="TREC or MS MARCO qrels.")
@click.option("--run", "run_path", required=True, type=EXISTING_FILE, help="Run file.")
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
def eval_command(
    qrels: str, run_path: str, metrics: str, relevance_level: int, include_missing: bool, as_json: bool
) -> None:
    """Evaluate a run: MRR@10 (official MS MARCO), nDCG@10, recall and MAP (trec_eval)."""
    from fastmarco.eval.metrics import evaluate, rank_columns
    from fastmarco.store.formats import load_qrels, read_run_columns

    judged = load_qrels(qrels)
    run = rank_columns(read_run_columns(run_path), source=run_path)
    if run and not any(qid in run for qid in judged):
        raise InputError(
            f"{run_path}: none of its {len(run):,} queries (e.g. {', '.join(sorted(run)[:3])}) is judged in "
            f"{qrels} (e.g. {', '.join(sorted(judged)[:3])}): are they of the same topic set?"
        )
    result = evaluate(
        judged,
        run,
        [m.strip() for m in metrics.split(",") if m.strip()],
        relevance_level=relevance_level,
        include_missing=include_missing,
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
@click.option("--collection", required=True, type=EXISTING_FILE, help="collection.tsv")
@click.option("--queries", required=True, type=EXISTING_FILE, help="queries.tsv")
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="Run file to write (TREC format)."
)
@click.option("-k", "depth", type=POSITIVE, default=1000, show_default=True, help="Passages per query.")
def bm25(collection: str, queries: str, out: str, depth: int) -> None:
    """BM25 baseline run (bm25s; Lucene BM25, k1 0.9, b 0.4, English stopwords and stemming)."""
    from fastmarco.eval.bm25 import bm25_run
    from fastmarco.store.formats import load_queries, write_run

    run = bm25_run(collection, load_queries(queries), depth, show_progress=sys.stderr.isatty())
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
@click.option("--queries", required=True, type=EXISTING_FILE, help="queries.tsv")
@click.option("--collection", required=True, type=EXISTING_FILE, help="collection.tsv")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Run file to write.")
@click.option(
    "--format", "run_format", type=click.Choice(["trec", "msmarco"]), default="trec", show_default=True
)
@click.option("--device", type=DEVICE, default="auto", show_default=True)
def rerank(
    model: str, run_path: str, queries: str, collection: str, out: str, run_format: str, device: str
) -> None:
    """Re-rank a candidate run with a bi-encoder or a cross-encoder (the TREC-DL re-ranking protocol)."""
    from fastmarco.eval.metrics import rank_columns
    from fastmarco.model.scorer import open_scorer
    from fastmarco.pipelines.rerank import rerank as rerank_run
    from fastmarco.store.formats import load_queries, read_run_columns, write_run
    from fastmarco.store.passages import PassageStore

    scorer = open_scorer(model, device=device)  # type: ignore[arg-type]  # click.Choice has checked it
    candidates = rank_columns(read_run_columns(run_path), source=run_path)
    with PassageStore.open(collection) as passages:
        entries = rerank_run(scorer, candidates, load_queries(queries), passages)
    lines = write_run(out, entries, run_format, tag="fastmarco-rerank")  # type: ignore[arg-type]
    click.echo(f"re-ranked {len(candidates):,} queries on {scorer.device}; wrote {lines:,} lines to {out}")
