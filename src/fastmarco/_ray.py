"""Ray, imported on demand (it is the `ray` extra), and the namespace fastmarco's actors live in."""

from __future__ import annotations

from typing import Any

from fastmarco.errors import InputError

NAMESPACE = "fastmarco"


def import_ray(address: str | None) -> Any:
    """The `ray` module, connected: to `address` as `ray.init` takes it (None: RAY_ADDRESS or a local
    cluster started for this process), unless this process is connected already."""
    try:
        import ray
    except ImportError:
        raise InputError("Ray is not installed: pip install 'fastmarco[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
    return ray


def describe_failure(exc: BaseException) -> str:
    """'<type>: <first line>' of what Ray raised (an actor dead past its restarts, Ray itself failing):
    its full text is a multi-line dump of the remote traceback."""
    return f"{type(exc).__name__}: {next(iter(str(exc).splitlines()), '')}"
