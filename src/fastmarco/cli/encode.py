"""`fastmarco encode`."""

from __future__ import annotations

from pathlib import Path

import click

from fastmarco.cli.app import DEVICE, POSITIVE, corpus_format_option, main, ray_option, runtime_option
from fastmarco.cli.progress import Reporter
from fastmarco.store.shards import DEFAULT_ROWS_PER_SHARD


@main.command()
@click.option("--model", required=True, type=click.Path(file_okay=False), help="Exported model directory.")
@click.option(
    "--corpus",
    required=True,
    help="collection.tsv (pid<TAB>passage) or BEIR corpus.jsonl (detected), or 'demo' for the bundled one.",
)
@corpus_format_option
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Shard directory.")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@runtime_option
@click.option(
    "--devices",
    help="One worker process per device over contiguous parts of the corpus, e.g. 0,1 (GPUs) or cpu,cpu.",
)
@ray_option(
    "Run the --devices workers as Ray actors (on the cluster at ADDRESS; bare: RAY_ADDRESS or a "
    "local cluster). OUT must be on storage every node sees."
)
@click.option(
    "--shard-size", type=POSITIVE, default=DEFAULT_ROWS_PER_SHARD, show_default=True, help="Rows per shard."
)
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
@click.pass_context
def encode(
    ctx: click.Context,
    model: str,
    corpus: str,
    corpus_format: str,
    out: str,
    device: str,
    runtime: str,
    devices: str | None,
    ray_address: str | None,
    shard_size: int,
    dtype: str,
    on_bad_line: str,
    restart: bool,
    quiet: bool,
) -> None:
    """Embed a whole corpus into memory-mapped shards; rerun the same command to resume."""
    from fastmarco.corpus.bundled import demo_corpus_path
    from fastmarco.encode.local import encode_corpus
    from fastmarco.encode.parallel import encode_corpus_on_devices, parse_devices
    from fastmarco.model.encoder import Encoder

    if devices and ctx.get_parameter_source("device") is not click.core.ParameterSource.DEFAULT:
        raise click.UsageError(
            "--device and --devices exclude each other: --devices names every worker's device"
        )
    if ray_address is not None and not devices:
        raise click.UsageError(
            "--ray runs the --devices workers: give --devices too (e.g. 0,1,2,3 or cpu,cpu)"
        )
    progress = Reporter(bars=False if quiet else None)
    corpus_path = demo_corpus_path() if corpus == "demo" else Path(corpus)
    options = {
        "rows_per_shard": shard_size,
        "dtype": dtype,
        "on_bad_line": on_bad_line,
        "restart": restart,
        "format": corpus_format,
    }
    try:
        if devices:
            runner = None
            if ray_address is not None:
                from fastmarco.encode.ray_runner import RayRunner

                runner = RayRunner(ray_address or None)
            summary = encode_corpus_on_devices(
                model,
                corpus_path,
                out,
                parse_devices(devices),
                progress=progress,
                runner=runner,
                runtime=runtime,
                **options,  # type: ignore[arg-type]
            )
        else:
            encoder = Encoder.open(model, device=device, runtime=runtime)  # type: ignore[arg-type]  # click.Choice
            if device == "auto" and not quiet:
                click.echo(f"device auto: using {encoder.device}", err=True)
            summary = encode_corpus(encoder, corpus_path, out, progress=progress, **options)  # type: ignore[arg-type]
    finally:
        progress.close()
    click.echo(summary.to_json())
