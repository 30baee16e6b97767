"""`fastmarco demo`: the main job on embedded defaults."""

from __future__ import annotations

import sys

import click

from fastmarco._version import __version__
from fastmarco.cli.app import DEVICE, POSITIVE, main


@main.command()
@click.option(
    "--synthetic", is_flag=True, help="Only the native store and search, on seeded random embeddings."
)
@click.option(
    "--rows", type=POSITIVE, default=200_000, show_default=True, help="--synthetic: embeddings to write."
)
@click.option(
    "--dim", type=POSITIVE, default=384, show_default=True, help="--synthetic: embedding dimension."
)
@click.option(
    "--queries", type=POSITIVE, default=256, show_default=True, help="--synthetic: queries to search."
)
@click.option("--out", type=click.Path(file_okay=False), help="Keep the demo's files here.")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
def demo(synthetic: bool, rows: int, dim: int, queries: int, out: str | None, device: str) -> None:
    """The main job on embedded defaults: export the bundled all-MiniLM-L6-v2, encode the bundled demo
    corpus, index it, answer the demo queries and evaluate them."""
    import tempfile

    from fastmarco.demo.pipeline import run_demo, run_pipeline

    if synthetic:
        click.echo(f"fastmarco {__version__} demo: {rows:,} x {dim} fp16 embeddings, {queries} queries")
        report = run_demo(rows=rows, dim=dim, queries=queries, out=out)
        click.echo(
            f"wrote {report.rows:,} rows in {report.shards} checksummed shards"
            f" in {report.write_seconds:.2f} s"
        )
        click.echo(
            f"exact cosine top-10: {report.queries_per_second:,.0f} queries/s "
            f"({report.search_seconds * 1000:.0f} ms for {report.queries})"
        )
        click.echo(
            f"query's source row ranked first: {report.top1_hits}/{report.queries}; "
            f"identical to NumPy brute force: {'yes' if report.matches_numpy else 'NO'}"
        )
        if not report.matches_numpy or report.top1_hits != report.queries:
            sys.exit(1)
        return
    with tempfile.TemporaryDirectory(prefix="fastmarco-demo-") as scratch:
        result = run_pipeline(out or scratch, device=device)
    click.echo(
        f"fastmarco {__version__}: {result.model} exported to ONNX, {result.passages} demo passages encoded, "
        f"indexed and searched for {result.queries} queries in {result.seconds:.1f} s"
    )
    for query, pid, passage in result.examples:
        click.echo(f"  {query!r} -> [{pid}] {passage[:90]}...")
    click.echo(f"nDCG@10 {result.ndcg_at_10:.4f}   MRR@10 {result.mrr_at_10:.4f}  (demo qrels)")
