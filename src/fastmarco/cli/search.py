"""`fastmarco index` and `fastmarco query`."""

from __future__ import annotations

import json
from typing import Any

import click

from fastmarco.cli.app import (
    DEVICE,
    EXISTING_DIR,
    EXISTING_FILE,
    POSITIVE,
    corpus_format_option,
    main,
    ray_option,
    ray_target,
    runtime_option,
)
from fastmarco.cli.progress import Reporter
from fastmarco.search.kinds import kind_names


@main.command()
@click.argument("shard_dir", type=EXISTING_DIR)
@click.option("--out", type=click.Path(file_okay=False), help="INDEX_DIR to create (not needed with --plan).")
@click.option(
    "--kind",
    type=click.Choice(kind_names()),
    default="auto",
    show_default=True,
    help="Preset, sized from the shard set (registered in fastmarco.search.kinds); auto: the planner's "
    "choice with --max-ram or --target-ms, else flat below 200,000 rows and opq-ivfpq above.",
)
@click.option(
    "--max-ram",
    help="auto: RAM the build and a server may use, e.g. 2G (default: this machine's available RAM).",
)
@click.option(
    "--target-ms", type=click.FloatRange(min=0, min_open=True), help="auto: one query's search time."
)
@click.option("--factory", help="A faiss index_factory string instead of the preset.")
@click.option(
    "--train-size",
    type=POSITIVE,
    help="Rows sampled for training (default: 64 per IVF list or 256 codebook centroids, at least "
    "65,536, at most every row).",
)
@click.option("--nprobe", type=POSITIVE, help="IVF lists probed per query (default: nlist / 8, at least 64).")
@click.option(
    "--refine",
    type=click.IntRange(min=0),
    help="Re-score refine x k candidates exactly (default: the kind's; 50 for a --factory string).",
)
@click.option(
    "--plan", "plan_only", is_flag=True, help="Print the RAM, disk and time a build needs; build nothing."
)
@click.option(
    "--overwrite", is_flag=True, help="Replace --out if an earlier index build wrote it (nothing else in it)."
)
@click.option(
    "--no-verify",
    is_flag=True,
    help="Do not hash the shard vectors first (you verify them elsewhere); id files are always checked.",
)
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    default="cpu",
    show_default=True,
    help="cuda: IVF k-means on the GPUs faiss sees (needs faiss-gpu); the index stays a CPU index.",
)
@click.option(
    "--groups",
    type=POSITIVE,
    help="Cut the shards into this many contiguous groups, one index each, to search on as many Ray "
    "actors (fastmarco query --ray) or in one process.",
)
def index(
    shard_dir: str,
    out: str | None,
    kind: str,
    max_ram: str | None,
    target_ms: float | None,
    factory: str | None,
    train_size: int | None,
    nprobe: int | None,
    refine: int | None,
    plan_only: bool,
    overwrite: bool,
    no_verify: bool,
    device: str,
    groups: int | None,
) -> None:
    """Build an index over a shard directory (--plan: say what a build needs, and with --max-ram or
    --target-ms which kind fits, and why)."""
    from fastmarco.search.index import build_index, build_index_groups, plan_index
    from fastmarco.search.planner import choose_kind, parse_bytes

    if out is None and not plan_only:
        raise click.UsageError("--out is required to build")
    if (max_ram or target_ms) and (kind != "auto" or factory):
        raise click.UsageError("--max-ram and --target-ms choose the kind: use them with --kind auto")
    if max_ram or target_ms:
        choice = choose_kind(
            shard_dir, max_ram=parse_bytes(max_ram) if max_ram else None, target_ms=target_ms
        )
        click.echo(choice.describe(), err=not plan_only)
        if choice.chosen is None:
            raise click.ClickException(choice.why)
        kind = choice.chosen.kind
    plan = plan_index(shard_dir, kind, factory, train_size)
    click.echo(f"plan: {plan.describe()}", err=not plan_only)
    if plan_only or out is None:  # --plan builds nothing, even where --out is given
        return
    options: dict[str, Any] = {  # click.Choice has checked kind and device
        "kind": kind,
        "factory": factory,
        "train_rows": train_size,
        "nprobe": nprobe,
        "refine": refine,
        "overwrite": overwrite,
        "progress": Reporter(),
        "device": device,
        "verify": not no_verify,
    }
    if groups is not None:
        grouped = build_index_groups(shard_dir, out, groups, **options)
        factories = ", ".join(dict.fromkeys(group.factory for group in grouped.groups))
        click.echo(f"built {len(grouped.groups)} groups ({factories}) over {grouped.rows:,} rows -> {out}")
        return
    manifest = build_index(shard_dir, out, **options)
    click.echo(
        f"built {manifest.factory} over {manifest.rows:,} rows in {manifest.build['seconds']:.1f} s; "
        f"{manifest.build['index_bytes'] / (1 << 20):,.1f} MiB -> {out}"
    )


@main.command()
@click.argument("index_dir", type=EXISTING_DIR)
@click.argument("text", required=False)
@click.option("-k", "k", type=POSITIVE, default=10, show_default=True, help="Results per query.")
@click.option("--queries", type=EXISTING_FILE, help="Batch: a queries.tsv or BEIR queries.jsonl file.")
@click.option("--run", "run_path", type=click.Path(dir_okay=False), help="Batch: the run file to write.")
@click.option(
    "--format", "run_format", type=click.Choice(["msmarco", "trec"]), default="trec", show_default=True
)
@click.option("--collection", type=EXISTING_FILE, help="Print passage texts from it.")
@corpus_format_option
@click.option("--model", type=click.Path(file_okay=False), help="Model (default: the encoding one).")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@runtime_option
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True, help="0: every core.")
@click.option(
    "--no-verify",
    is_flag=True,
    help="Do not hash the shard vectors at start (you verify them elsewhere); id files are always checked.",
)
@ray_option(
    "A grouped index (index --groups): search each group on its own Ray actor, on the cluster "
    "at ADDRESS (bare: RAY_ADDRESS or a local cluster); INDEX_DIR on storage every node sees."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def query(
    index_dir: str,
    text: str | None,
    k: int,
    queries: str | None,
    run_path: str | None,
    run_format: str,
    collection: str | None,
    corpus_format: str,
    model: str | None,
    device: str,
    runtime: str,
    threads: int,
    no_verify: bool,
    ray_address: str | None,
    as_json: bool,
) -> None:
    """Search INDEX_DIR for TEXT, or for every query of --queries into --run."""
    from fastmarco.engine import Engine
    from fastmarco.pipelines.retrieve import retrieve_run, search_hits
    from fastmarco.store.formats import load_queries, write_run
    from fastmarco.store.passages import PassageStore

    if (text is None) == (queries is None) or (queries is None) != (run_path is None):
        raise click.UsageError("give either TEXT, or --queries with --run")
    passages = PassageStore.open(collection, format=corpus_format) if collection is not None else None
    engine = Engine.open(
        index_dir,
        model=model,
        device=device,  # type: ignore[arg-type]  # click.Choice has checked it
        threads=threads,
        verify=not no_verify,
        ray=ray_target(ray_address),
        runtime=runtime,
    )
    with engine:
        if k > engine.index.rows > 0:
            rows = engine.index.rows
            click.echo(f"note: -k {k:,} is more than the index's {rows:,} rows: {rows:,} a query", err=True)
        if queries is not None and run_path is not None:
            asked = load_queries(queries)
            lines = write_run(run_path, retrieve_run(engine, asked, k), run_format, tag="fastmarco")  # type: ignore[arg-type]
            click.echo(f"wrote {lines:,} lines for {len(asked):,} queries to {run_path}")
            return
        hits = search_hits(engine, str(text), k, passages)
    if as_json:
        click.echo(json.dumps([h.as_json(passages is not None) for h in hits], ensure_ascii=False))
        return
    for h in hits:
        click.echo(f"{h.rank:>3}  {h.score:8.4f}  {h.pid}" + (f"  {h.text}" if h.text is not None else ""))
