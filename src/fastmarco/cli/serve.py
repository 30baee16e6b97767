"""`fastmarco serve`."""

from __future__ import annotations

import sys
from pathlib import Path

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


@main.command()
@click.argument("index_dir", type=EXISTING_DIR)
@click.option(
    "--collection",
    type=EXISTING_FILE,
    help="collection.tsv or BEIR corpus.jsonl: answer /search with passage text.",
)
@corpus_format_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0: any free port."
)
@click.option(
    "--max-batch-tokens",
    type=POSITIVE,
    default=16_384,
    show_default=True,
    help="Tokens coalesced into one encode.",
)
@click.option(
    "--max-wait-ms",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="How long a batch that is not full waits for more requests (0: run what is queued at once).",
)
@click.option(
    "--max-queue", type=POSITIVE, default=512, show_default=True, help="Requests queued before 429s."
)
@click.option("--max-inputs", type=POSITIVE, default=256, show_default=True, help="Texts per request.")
@click.option("--max-k", type=POSITIVE, default=1000, show_default=True, help="Largest k a search may ask.")
@click.option(
    "--max-results",
    type=POSITIVE,
    default=20_000,
    show_default=True,
    help="Results a search request may ask: its queries x k.",
)
@click.option(
    "--cross-encoder",
    type=EXISTING_DIR,
    help="Exported cross-encoder: adds /v1/rerank (and /rerank) and /search's 'rerank'.",
)
@click.option(
    "--max-documents",
    type=POSITIVE,
    default=1_000,
    show_default=True,
    help="Re-ranking: documents per request.",
)
@click.option(
    "--max-document-chars",
    type=POSITIVE,
    default=32_768,
    show_default=True,
    help="Re-ranking: characters per document.",
)
@click.option(
    "--max-rerank-tokens",
    type=POSITIVE,
    default=262_144,
    show_default=True,
    help="Re-ranking: tokens of one request's query-document pairs.",
)
@click.option("--payload-limit", type=POSITIVE, default=2_000_000, show_default=True, help="Bytes per body.")
@click.option(
    "--max-connections",
    type=POSITIVE,
    default=1_000,
    show_default=True,
    help="Open connections at most; past it the oldest still sending its headers is closed.",
)
@click.option(
    "--header-timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds a request's headers may take to arrive.",
)
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True, help="0: every core.")
@click.option(
    "--api-key",
    envvar="FASTMARCO_API_KEY",
    help="Require 'Authorization: Bearer KEY' (or set FASTMARCO_API_KEY).",
)
@click.option(
    "--model",
    "model_dir",
    type=EXISTING_DIR,
    help="Model directory (default: the one that encoded the shards).",
)
@click.option("--served-model-name", help="Model name in responses (default: the exported model's source).")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@runtime_option
@click.option(
    "--no-verify", is_flag=True, help="Do not hash the shards at start-up (you verify them elsewhere)."
)
@click.option("--access-log", is_flag=True, help="Log every request.")
@ray_option(
    "A grouped index (index --groups): search each group on its own Ray actor (ADDRESS; bare: "
    "RAY_ADDRESS or a local cluster)."
)
def serve(
    index_dir: str,
    collection: str | None,
    corpus_format: str,
    host: str,
    port: int,
    max_batch_tokens: int,
    max_wait_ms: float,
    max_queue: int,
    max_inputs: int,
    max_k: int,
    max_results: int,
    cross_encoder: str | None,
    max_documents: int,
    max_document_chars: int,
    max_rerank_tokens: int,
    payload_limit: int,
    max_connections: int,
    header_timeout: float,
    threads: int,
    api_key: str | None,
    model_dir: str | None,
    served_model_name: str | None,
    device: str,
    runtime: str,
    no_verify: bool,
    access_log: bool,
    ray_address: str | None,
) -> None:
    """Serve INDEX_DIR over HTTP: /v1/embeddings (OpenAI), /search, a search page at /, and with
    --cross-encoder /v1/rerank (Cohere, Jina)."""
    try:
        from fastmarco.serve.app import ServeConfig, allowed_hosts_for, create_app
    except ImportError as exc:
        raise click.ClickException(
            f"fastmarco serve needs the serve extra ({exc.name} is missing): pip install 'fastmarco[serve]'"
        ) from exc
    from fastmarco.engine import Engine
    from fastmarco.serve.schema import Limits
    from fastmarco.serve.server import bind
    from fastmarco.serve.server import serve as run_server
    from fastmarco.store.passages import PassageStore

    engine = Engine.open(
        index_dir,
        model=model_dir,
        device=device,  # type: ignore[arg-type]  # click.Choice has checked it
        threads=threads,
        verify=not no_verify,
        ray=ray_target(ray_address),
        cross_encoder=cross_encoder,
        runtime=runtime,
    )
    passages = PassageStore.open(collection, format=corpus_format) if collection else None
    loaded = engine.describe()
    name = served_model_name or default_model_name(loaded.model_source, loaded.model_directory)
    config = ServeConfig(
        name,
        max_batch_tokens=max_batch_tokens,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        limits=Limits(
            max_inputs,
            max_k,
            payload_limit,
            max_results,
            max_documents,
            max_document_chars,
            max_rerank_tokens,
        ),
        api_key=api_key,
        allowed_hosts=allowed_hosts_for(host),
    )
    if config.allowed_hosts is None and config.api_key is None:
        click.echo(
            f"warning: listening on {host} without an API key: anyone who reaches this port can use it "
            "(set FASTMARCO_API_KEY)",
            err=True,
        )
    sock = bind(host, port)
    where = sock.getsockname()
    shown = f"[{where[0]}]" if ":" in where[0] else where[0]
    click.echo(
        f"fastmarco serve: http://{shown}:{where[1]} ({name}, {loaded.rows:,} rows, "
        f"{loaded.index_kind}, {loaded.device})",
        err=True,
    )
    with engine:
        status = run_server(
            create_app(engine, passages, config),
            sock,
            access_log=access_log,
            max_connections=max_connections,
            header_timeout=header_timeout,
        )
    sys.exit(status)


def default_model_name(source: str | None, directory: Path) -> str:
    """The hub id the model was exported from; for a local folder, the export directory's name."""
    if source and not Path(source).is_absolute() and not Path(source).exists():
        return source
    return directory.name
