"""`fastmarco mine`."""

from __future__ import annotations

import click

from fastmarco.cli.app import DEVICE, EXISTING_FILE, POSITIVE, corpus_format_option, main
from fastmarco.cli.progress import Reporter


def _system(value: str) -> tuple[str, str]:
    name, equals, directory = value.partition("=")
    if not equals or not name or not directory:
        raise click.BadParameter(f"expected NAME=INDEX_DIR, got {value!r}", param_hint="--system")
    return name, directory


@main.command()
@click.option(
    "--queries", required=True, type=EXISTING_FILE, help="queries.tsv or BEIR queries.jsonl to mine for."
)
@click.option("--qrels", required=True, type=EXISTING_FILE, help="Positives (TREC or MS MARCO qrels).")
@click.option(
    "--collection", required=True, type=EXISTING_FILE, help="collection.tsv or BEIR corpus.jsonl (detected)."
)
@click.option(
    "--system",
    "systems",
    multiple=True,
    metavar="NAME=INDEX_DIR",
    help="A candidate system: a fastmarco index (repeatable).",
)
@corpus_format_option
@click.option("--bm25", is_flag=True, help="BM25 over the collection as a candidate system ('bm25').")
@click.option(
    "--cross-encoder",
    type=click.Path(exists=True, file_okay=False),
    help="Exported cross-encoder that scores every candidate (else the one bi-encoder system's scores).",
)
@click.option("--depth", required=True, type=POSITIVE, help="Candidates per query (range_max).")
@click.option(
    "--range-min", type=click.IntRange(min=0), default=0, show_default=True, help="Skip the best N."
)
@click.option("--num-negatives", type=POSITIVE, default=3, show_default=True, help="Negatives per query.")
@click.option("--sampling", type=click.Choice(["top", "random"]), default="top", show_default=True)
@click.option(
    "--ce-margin", type=float, help="v3 rule: keep score <= min positive - X, per system in its order."
)
@click.option("--absolute-margin", type=float, help="sentence-transformers: drop score + X > min positive.")
@click.option(
    "--relative-margin",
    type=float,
    help="sentence-transformers: drop score > min positive - |min positive| * X.",
)
@click.option("--max-score", type=float, help="sentence-transformers: drop score > X.")
@click.option("--relevance-level", type=int, default=1, show_default=True, help="Lowest positive grade.")
@click.option("--seed", type=int, default=0, show_default=True, help="For --sampling random.")
@click.option("--block-queries", type=POSITIVE, default=1024, show_default=True, help="Queries per block.")
@click.option(
    "--format", "train_format", type=click.Choice(["parquet", "jsonl"]), default="parquet", show_default=True
)
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory (rerun to resume).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it holds another job.")
def mine(
    queries: str,
    qrels: str,
    collection: str,
    corpus_format: str,
    systems: tuple[str, ...],
    bm25: bool,
    cross_encoder: str | None,
    depth: int,
    range_min: int,
    num_negatives: int,
    sampling: str,
    ce_margin: float | None,
    absolute_margin: float | None,
    relative_margin: float | None,
    max_score: float | None,
    relevance_level: int,
    seed: int,
    block_queries: int,
    train_format: str,
    device: str,
    out: str,
    overwrite: bool,
) -> None:
    """Mine hard negatives for training: candidates from each system, positives removed, scored by the
    cross-encoder, filtered by a margin, sampled (see fastmarco.mine)."""
    from fastmarco.mine.job import MineSpec, mine
    from fastmarco.mine.select import Selection

    spec = MineSpec(
        queries=queries,
        qrels=qrels,
        collection=collection,
        selection=Selection(
            depth=depth,
            num_negatives=num_negatives,
            range_min=range_min,
            sampling=sampling,  # type: ignore[arg-type]  # click.Choice has checked it
            ce_margin=ce_margin,
            absolute_margin=absolute_margin,
            relative_margin=relative_margin,
            max_score=max_score,
        ),
        systems=tuple(_system(s) for s in systems),
        bm25=bm25,
        cross_encoder=cross_encoder,
        relevance_level=relevance_level,
        seed=seed,
        block_queries=block_queries,
        train_format=train_format,  # type: ignore[arg-type]
        collection_format=corpus_format,
    )
    with Reporter() as progress:
        summary = mine(
            spec,
            out,
            overwrite=overwrite,
            device=device,  # type: ignore[arg-type]
            progress=progress,
            show_progress=progress.bars_enabled,
        )
    click.echo(
        f"mined {summary.queries_mined:,} of {summary.queries_in_file:,} queries "
        f"({summary.resumed_blocks} blocks resumed) -> {out}"
    )
    if summary.queries_without_judged_positives or summary.queries_whose_positives_are_absent:
        click.echo(
            f"  skipped: {summary.queries_without_judged_positives:,} queries with no positive in the "
            f"qrels, {summary.queries_whose_positives_are_absent:,} whose positives are all absent from "
            f"the collection ({summary.positives_absent_from_collection:,} positives absent in all)"
        )
    skipped = ", ".join(f"{n:,} by {rule}" for rule, n in summary.skipped_by_rule.items()) or "none"
    click.echo(f"  candidates considered: {summary.candidates_considered:,}; skipped: {skipped}")
    click.echo(
        f"  negatives: {summary.negatives:,}; queries with fewer than {num_negatives}: "
        f"{summary.queries_with_too_few_negatives:,} (none at all: {summary.queries_without_negatives:,})"
    )
    click.echo("  rows: " + ", ".join(f"{layout} {n:,}" for layout, n in summary.rows.items()))
    click.echo(
        "  seconds: "
        + ", ".join(
            f"{stage} {value:,.1f}"
            for stage, value in summary.seconds.items()
            if stage != "cross_encoder_pairs"
        )
        + f"; peak RSS {summary.peak_rss_mb:,.0f} MB"
    )
