"""`fastmarco info`: what this installation runs on, for bug reports."""

from __future__ import annotations

import platform
import sys

import click

from fastmarco.cli.app import main


@main.command()
def info() -> None:
    """The version, Python, platform, the native kernels' SIMD variant (FASTMARCO_SIMD forces one) and
    the model runtimes (FASTMARCO_RUNTIME stands in for auto)."""
    import os

    from fastmarco._version import __version__
    from fastmarco.model.runtimes import RUNTIME_ENV, choices_path, runtimes_described
    from fastmarco.search.kernels import native_info

    native = native_info()
    click.echo(f"fastmarco {__version__}")
    click.echo(f"python {sys.version.split()[0]} on {platform.platform()}")
    click.echo(
        f"native build: -march={native.march or 'default (portable)'}; variants {', '.join(native.compiled)}"
    )
    click.echo(f"SIMD variant: {native.active} (this CPU runs {', '.join(native.runs)})")
    click.echo(f"Hamming kernel: {native.hamming_kernel}")
    click.echo(f"model runtimes: {'; '.join(runtimes_described())}")
    click.echo(
        f"runtime auto: {os.environ.get(RUNTIME_ENV) or 'measured per model'}; choices in {choices_path()}"
    )
