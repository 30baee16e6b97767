"""`fastmarco info`: what this installation runs on, for bug reports."""

from __future__ import annotations

import platform
import sys

import click

from fastmarco.cli.app import main


@main.command()
def info() -> None:
    """The version, Python, platform and the native kernels' SIMD variant (FASTMARCO_SIMD forces one)."""
    from fastmarco._version import __version__
    from fastmarco.search.kernels import native_info

    native = native_info()
    click.echo(f"fastmarco {__version__}")
    click.echo(f"python {sys.version.split()[0]} on {platform.platform()}")
    click.echo(
        f"native build: -march={native.march or 'default (portable)'}; variants {', '.join(native.compiled)}"
    )
    click.echo(f"SIMD variant: {native.active} (this CPU runs {', '.join(native.runs)})")
    click.echo(f"Hamming kernel: {native.hamming_kernel}")
