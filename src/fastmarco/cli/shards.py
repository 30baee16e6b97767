"""`fastmarco shards info`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from fastmarco.cli.app import EXISTING_DIR, main
from fastmarco.store.shards import Manifest, ShardSet


@main.group()
def shards() -> None:
    """Inspect embedding shard directories."""


@shards.command("info")
@click.argument("directory", type=EXISTING_DIR)
@click.option("--no-verify", is_flag=True, help="Skip hashing the payloads (fast, checks only the manifest).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def shards_info(directory: str, no_verify: bool, as_json: bool) -> None:
    """Counts, dim, dtype and checksum status of a shard directory (exit 1 if any shard is bad)."""
    if no_verify:
        manifest, statuses = Manifest.load(Path(directory)), None
    else:
        manifest, statuses = ShardSet.verify(directory)
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
