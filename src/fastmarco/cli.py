"""The `fastmarco` command line; every command only calls the Python API."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from fastmarco import __version__
from fastmarco.evaluate import METRICS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fastmarco")
def main() -> None:
    """Fast embedding and indexing for MS MARCO-style passage retrieval."""


@main.group()
def shards() -> None:
    """Inspect embedding shard directories."""


@shards.command("info")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--no-verify", is_flag=True, help="Skip hashing the payloads (fast, checks only the manifest).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def shards_info(directory: str, no_verify: bool, as_json: bool) -> None:
    """Counts, dim, dtype and checksum status of a shard directory (exit 1 if any shard is bad)."""
    from pathlib import Path

    from fastmarco.shards import Manifest, ShardFormatError, ShardSet

    try:
        if no_verify:
            manifest, statuses = Manifest.load(Path(directory)), None
        else:
            manifest, statuses = ShardSet.verify(directory)
    except ShardFormatError as exc:
        raise click.ClickException(str(exc)) from exc
    bad = [s for s in statuses or [] if s.error is not None]
    summary = {
        "directory": directory,
        "rows": manifest.rows,
        "shards": len(manifest.shards),
        "dim": manifest.dim,
        "dtype": manifest.dtype,
        "id_type": manifest.id_type,
        "complete": manifest.complete,
        "checksums": "not verified" if statuses is None else ("ok" if not bad else f"{len(bad)} bad"),
        "metadata": manifest.metadata,
        "problems": [{"shard": s.vectors, "error": s.error} for s in bad],
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        click.echo(
            f"{directory}: {manifest.rows:,} rows in {len(manifest.shards)} shards, "
            f"dim {manifest.dim}, {manifest.dtype}, {manifest.id_type} ids, "
            f"{'complete' if manifest.complete else 'INCOMPLETE (writer did not finish)'}"
        )
        click.echo(f"checksums: {summary['checksums']}")
        for s in bad:
            click.echo(f"  BAD {s.vectors}: {s.error}", err=True)
    if bad:
        sys.exit(1)


@main.command()
@click.argument("model")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory to create.")
@click.option("--fp16", is_flag=True, help="Convert to fp16 (for the GPU) after the transformer fusions.")
@click.option("--optimize", type=click.Choice(["O1", "O2", "O3", "O4"]), help="ORT optimization level.")
@click.option("--max-seq-length", type=int, help="Truncation length (default: the model's).")
@click.option("--similarity", type=click.Choice(["cosine", "dot"]), help="Override the model's similarity.")
@click.option("--opset", type=int, help="ONNX opset (default: optimum's choice).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def export(
    model: str,
    out: str,
    fp16: bool,
    optimize: str | None,
    max_seq_length: int | None,
    similarity: str | None,
    opset: int | None,
    overwrite: bool,
) -> None:
    """Export MODEL (hub id or local folder) to an ONNX directory that outputs the sentence embedding."""
    from fastmarco.export import ExportError, export_model

    try:
        report = export_model(
            model,
            out,
            fp16=fp16,
            optimize=optimize,  # type: ignore[arg-type]
            max_seq_length=max_seq_length,
            similarity=similarity,  # type: ignore[arg-type]
            opset=opset,
            overwrite=overwrite,
        )
    except (ExportError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from exc
    card = report.card
    fusions = ", ".join(f"{name} x{count}" for name, count in report.fusions.items()) or "none"
    click.echo(f"exported {model} -> {report.directory}")
    click.echo(
        f"  modules: {' + '.join(card.modules)}; pooling {card.pooling}; similarity {card.similarity}"
        f" ({card.similarity_source}); max_seq_length {card.max_seq_length}"
    )
    click.echo(f"  precision {report.precision}; optimize {report.optimize or 'none'}; fusions: {fusions}")
    click.echo(f"  parity with sentence-transformers: min cosine {report.parity_min_cosine:.6f}")


@main.command("eval")
@click.option(
    "--qrels", required=True, type=click.Path(exists=True, dir_okay=False), help="TREC or MS MARCO qrels."
)
@click.option(
    "--run", "run_path", required=True, type=click.Path(exists=True, dir_okay=False), help="Run file."
)
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
    from fastmarco.evaluate import evaluate, rank_columns
    from fastmarco.formats import FormatError, load_qrels, read_run_columns

    try:
        result = evaluate(
            load_qrels(qrels),
            rank_columns(read_run_columns(run_path), source=run_path),
            [m.strip() for m in metrics.split(",") if m.strip()],
            relevance_level=relevance_level,
            include_missing=include_missing,
        )
    except (FormatError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
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
@click.option(
    "--collection", required=True, type=click.Path(exists=True, dir_okay=False), help="collection.tsv"
)
@click.option("--queries", required=True, type=click.Path(exists=True, dir_okay=False), help="queries.tsv")
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="Run file to write (TREC format)."
)
@click.option("-k", "depth", default=1000, show_default=True, help="Passages per query.")
def bm25(collection: str, queries: str, out: str, depth: int) -> None:
    """BM25 baseline run (bm25s; Lucene BM25, k1 0.9, b 0.4, English stopwords and stemming)."""
    from fastmarco.bm25 import bm25_run
    from fastmarco.formats import FormatError, load_queries, write_run

    try:
        entries = bm25_run(collection, load_queries(queries), depth, show_progress=sys.stderr.isatty())
    except (FormatError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    lines = write_run(out, entries, "trec", tag="fastmarco-bm25")
    click.echo(f"wrote {lines:,} lines for {len({e.qid for e in entries}):,} queries to {out}")


@main.command()
@click.option("--model", required=True, type=click.Path(exists=True, file_okay=False), help="Exported model.")
@click.option(
    "--run", "run_path", required=True, type=click.Path(exists=True, dir_okay=False), help="Candidates."
)
@click.option("--queries", required=True, type=click.Path(exists=True, dir_okay=False), help="queries.tsv")
@click.option(
    "--collection", required=True, type=click.Path(exists=True, dir_okay=False), help="collection.tsv"
)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Run file to write.")
@click.option(
    "--format", "run_format", type=click.Choice(["trec", "msmarco"]), default="trec", show_default=True
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def rerank(
    model: str, run_path: str, queries: str, collection: str, out: str, run_format: str, device: str
) -> None:
    """Re-rank a candidate run with a bi-encoder (the TREC-DL re-ranking protocol)."""
    from fastmarco.encoder import Encoder, EncoderError
    from fastmarco.evaluate import rank_columns
    from fastmarco.formats import FormatError, load_queries, read_run_columns, write_run
    from fastmarco.rerank import rerank as rerank_run

    try:
        encoder = Encoder.open(model, device=device)  # type: ignore[arg-type]
        candidates = rank_columns(read_run_columns(run_path), source=run_path)
        entries = rerank_run(encoder, candidates, load_queries(queries), collection)
    except (FormatError, ValueError, EncoderError) as exc:
        raise click.ClickException(str(exc)) from exc
    lines = write_run(out, entries, run_format, tag="fastmarco-rerank")  # type: ignore[arg-type]
    click.echo(f"re-ranked {len(candidates):,} queries on {encoder.device}; wrote {lines:,} lines to {out}")


@main.command()
@click.option("--model", required=True, type=click.Path(exists=True, file_okay=False), help="Exported model.")
@click.option(
    "--corpus", required=True, help="collection.tsv (pid<TAB>passage), or 'demo' for the bundled one."
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Shard directory.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option(
    "--devices",
    help="One worker process per device over contiguous parts of the corpus, e.g. 0,1 (GPUs) or cpu,cpu.",
)
@click.option("--shard-size", default=1_000_000, show_default=True, help="Rows per shard.")
@click.option("--dtype", type=click.Choice(["fp16", "fp32"]), default="fp16", show_default=True)
@click.option(
    "--on-bad-line",
    type=click.Choice(["error", "skip"]),
    default="error",
    show_default=True,
    help="skip: write each bad line to skipped-lines.tsv in OUT and count it.",
)
@click.option("--restart", is_flag=True, help="Discard what OUT holds and start over.")
@click.option("--quiet", is_flag=True, help="No progress line.")
def encode(
    model: str,
    corpus: str,
    out: str,
    device: str,
    devices: str | None,
    shard_size: int,
    dtype: str,
    on_bad_line: str,
    restart: bool,
    quiet: bool,
) -> None:
    """Embed a whole corpus into memory-mapped shards; rerun the same command to resume."""
    from fastmarco.corpus import ProgressLine, encode_corpus
    from fastmarco.demo_corpus import demo_corpus_path
    from fastmarco.encoder import Encoder, EncoderError
    from fastmarco.multi_device import EncodeWorkerError, encode_corpus_on_devices, parse_devices

    progress = ProgressLine(enabled=False if quiet else None)
    corpus_path = demo_corpus_path() if corpus == "demo" else Path(corpus)
    options: dict[str, Any] = {
        "rows_per_shard": shard_size,
        "dtype": dtype,
        "on_bad_line": on_bad_line,
        "restart": restart,
        "progress": progress,
    }
    try:
        if devices:
            summary = encode_corpus_on_devices(model, corpus_path, out, parse_devices(devices), **options)
        else:
            encoder = Encoder.open(model, device=device)  # type: ignore[arg-type]
            if device == "auto" and not quiet:
                click.echo(f"device auto: using {encoder.device}", err=True)
            summary = encode_corpus(encoder, corpus_path, out, **options)
    # ValueError covers FormatError, EncodeMismatchError and a bad --devices
    except (ValueError, EncoderError, EncodeWorkerError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        progress.close()
    click.echo(summary.to_json())


@main.command()
@click.argument("shard_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="INDEX_DIR to create (not needed with --plan).")
@click.option(
    "--kind",
    type=click.Choice(["flat", "pq", "ivfpq", "opq-ivfpq", "hnsw"]),
    default="opq-ivfpq",
    show_default=True,
    help="Preset, sized from the shard set (see fastmarco.index).",
)
@click.option("--factory", help="A faiss index_factory string instead of the preset.")
@click.option("--train-size", type=int, help="Rows sampled for training (default: 64 per IVF list).")
@click.option("--nprobe", type=int, help="IVF lists probed per query (default: nlist / 8, at least 64).")
@click.option("--refine", default=50, show_default=True, help="Re-score refine x k PQ candidates exactly.")
@click.option(
    "--plan", "plan_only", is_flag=True, help="Print the RAM, disk and time a build needs; build nothing."
)
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    default="cpu",
    show_default=True,
    help="cuda: IVF k-means on the GPUs faiss sees (needs faiss-gpu); the index stays a CPU index.",
)
def index(
    shard_dir: str,
    out: str | None,
    kind: str,
    factory: str | None,
    train_size: int | None,
    nprobe: int | None,
    refine: int,
    plan_only: bool,
    overwrite: bool,
    device: str,
) -> None:
    """Build a faiss index over a shard directory."""
    from fastmarco.index import build_index, plan_index
    from fastmarco.shards import ShardFormatError

    try:
        plan = plan_index(shard_dir, kind, factory, train_size)  # type: ignore[arg-type]
        click.echo(f"plan: {plan.describe()}", err=not plan_only)
        if plan_only:
            return
        if out is None:
            raise click.UsageError("--out is required to build")
        manifest = build_index(
            shard_dir,
            out,
            kind=kind,  # type: ignore[arg-type]  # click.Choice has checked it
            factory=factory,
            train_rows=train_size,
            nprobe=nprobe,
            refine=refine,
            overwrite=overwrite,
            progress=lambda message: click.echo(message, err=True),
            device=device,  # type: ignore[arg-type]
        )
    except (ShardFormatError, FileExistsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    build = manifest["build"]
    click.echo(
        f"built {manifest['factory']} over {manifest['rows']:,} rows in {build['seconds']:.1f} s; "
        f"{build['index_bytes'] / (1 << 20):,.1f} MiB -> {out}"
    )


@main.command()
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("text", required=False)
@click.option("-k", "k", default=10, show_default=True, help="Results per query.")
@click.option("--queries", type=click.Path(exists=True, dir_okay=False), help="Batch: a queries.tsv file.")
@click.option("--run", "run_path", type=click.Path(dir_okay=False), help="Batch: the run file to write.")
@click.option(
    "--format", "run_format", type=click.Choice(["msmarco", "trec"]), default="trec", show_default=True
)
@click.option(
    "--collection", type=click.Path(exists=True, dir_okay=False), help="Print passage texts from it."
)
@click.option(
    "--model", type=click.Path(exists=True, file_okay=False), help="Model (default: the encoding one)."
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def query(
    index_dir: str,
    text: str | None,
    k: int,
    queries: str | None,
    run_path: str | None,
    run_format: str,
    collection: str | None,
    model: str | None,
    device: str,
    as_json: bool,
) -> None:
    """Search INDEX_DIR for TEXT, or for every query of --queries into --run."""
    from fastmarco.engine import Engine
    from fastmarco.formats import FormatError, RunEntry, load_queries, read_collection, write_run
    from fastmarco.index import IndexMismatchError

    if (text is None) == (queries is None) or (queries is None) != (run_path is None):
        raise click.UsageError("give either TEXT, or --queries with --run")
    try:
        engine = Engine.open(index_dir, model=model, device=device)  # type: ignore[arg-type]
        if queries is not None and run_path is not None:
            asked = load_queries(queries)
            qids = list(asked)
            ids, scores = engine.search([asked[q] for q in qids], k)
            entries = [
                RunEntry(qid, str(pid), rank, float(score))
                for qid, row_ids, row_scores in zip(qids, ids, scores, strict=True)
                for rank, (pid, score) in enumerate(zip(row_ids, row_scores, strict=True), 1)
                if score != float("-inf")
            ]
            lines = write_run(run_path, entries, run_format, tag="fastmarco")  # type: ignore[arg-type]
            click.echo(f"wrote {lines:,} lines for {len(qids):,} queries to {run_path}")
            return
        ids, scores = engine.search([str(text)], k)
    except (FormatError, IndexMismatchError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    hits = [
        (str(pid), float(score))
        for pid, score in zip(ids[0], scores[0], strict=True)
        if score != float("-inf")
    ]
    texts = {}
    if collection is not None:
        wanted = {pid for pid, _ in hits}
        texts = {pid: passage for pid, passage in read_collection(collection) if pid in wanted}
    if as_json:
        click.echo(
            json.dumps(
                [
                    {"rank": r, "pid": pid, "score": s, **({"text": texts[pid]} if pid in texts else {})}
                    for r, (pid, s) in enumerate(hits, 1)
                ],
                ensure_ascii=False,
            )
        )
        return
    for rank, (pid, score) in enumerate(hits, 1):
        click.echo(f"{rank:>3}  {score:8.4f}  {pid}" + (f"  {texts[pid]}" if pid in texts else ""))


@main.command()
@click.option(
    "--synthetic", is_flag=True, help="Only the native store and search, on seeded random embeddings."
)
@click.option("--rows", default=200_000, show_default=True, help="--synthetic: embeddings to write.")
@click.option("--dim", default=384, show_default=True, help="--synthetic: embedding dimension.")
@click.option("--queries", default=256, show_default=True, help="--synthetic: queries to search.")
@click.option("--out", type=click.Path(file_okay=False), help="Keep the demo's files here.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def demo(synthetic: bool, rows: int, dim: int, queries: int, out: str | None, device: str) -> None:
    """The main job on embedded defaults: export the bundled all-MiniLM-L6-v2, encode the bundled demo
    corpus, index it, answer the demo queries and evaluate them."""
    import tempfile

    from fastmarco.demo import run_demo, run_pipeline

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
        try:
            result = run_pipeline(out or scratch, device=device)
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(
        f"fastmarco {__version__}: {result.model} exported to ONNX, {result.passages} demo passages encoded, "
        f"indexed and searched for {result.queries} queries in {result.seconds:.1f} s"
    )
    for query, pid, passage in result.examples:
        click.echo(f"  {query!r} -> [{pid}] {passage[:90]}...")
    click.echo(f"nDCG@10 {result.ndcg_at_10:.4f}   MRR@10 {result.mrr_at_10:.4f}  (demo qrels)")
