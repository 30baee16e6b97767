"""The `fastmarco` command group and the CLI's one error boundary."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from fastmarco._version import __version__
from fastmarco.corpus.formats import format_choices
from fastmarco.errors import FastmarcoError
from fastmarco.model.runtimes import runtime_names

FC = TypeVar("FC", bound=Callable[..., Any])


class FastmarcoGroup(click.Group):
    """Every FastmarcoError, and every OSError (a missing file, a full disk, a permission), becomes one
    `Error: <message>` line and exit status 1. Anything else is a bug and keeps its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FastmarcoError as exc:
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise click.ClickException(f"{where}{exc.strerror or exc}") from exc


@click.group(cls=FastmarcoGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fastmarco")
def main() -> None:
    """Fast embedding and indexing for MS MARCO-style passage retrieval."""


DEVICE = click.Choice(["auto", "cpu", "cuda"])
EXISTING_FILE = click.Path(exists=True, dir_okay=False)
EXISTING_DIR = click.Path(exists=True, file_okay=False)
POSITIVE = click.IntRange(min=1)


def corpus_format_option(func: FC) -> FC:
    """`--corpus-format`: how to read the collection (or corpus); detected from its first bytes unless
    named."""
    return click.option(
        "--corpus-format",
        type=click.Choice(format_choices()),
        default="auto",
        show_default=True,
        help="Read the collection as this format instead of detecting it (beir-text: BEIR without titles).",
    )(func)


def runtime_option(func: FC) -> FC:
    """`--runtime`: what runs the model; auto takes the fastest installed one on this host."""
    return click.option(
        "--runtime",
        type=click.Choice(runtime_names()),
        default="auto",
        show_default=True,
        help="Model runtime: auto picks the one that runs the export fastest here (measured once, cached).",
    )(func)


def ray_target(ray_address: str | None) -> bool | str:
    """What `Engine.open(ray=)` takes for a `--ray` value: False absent, True bare, else the address."""
    return False if ray_address is None else ray_address or True


def ray_option(help: str) -> Callable[[FC], FC]:
    """`--ray [ADDRESS]`: None when absent, '' when bare (RAY_ADDRESS or a local cluster)."""
    return click.option(
        "--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]", help=help
    )
