"""The `fastmarco` command line. Each module parses one command group, calls the Python API and
prints; errors meet one boundary in `app.FastmarcoGroup`."""

from fastmarco.cli import demo, encode, evaluate, experiment, export, info, mine, search, serve, shards  # noqa: F401  (registers commands)
from fastmarco.cli.app import main

__all__ = ["main"]
