"""Run the app under uvicorn on a socket bound here, so the real port (with --port 0) is known."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from types import FrameType

from starlette.types import ASGIApp

from fastmarco.errors import StoreIOError
from fastmarco.serve.guard import HEADER_TIMEOUT_SECONDS, MAX_CONNECTIONS, guarded_protocol

DRAIN_SECONDS = 30  # SIGTERM: in-flight requests get this long to finish


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StoreIOError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(
    app: ASGIApp,
    sock: socket.socket,
    *,
    access_log: bool = False,
    max_connections: int = MAX_CONNECTIONS,
    header_timeout: float = HEADER_TIMEOUT_SECONDS,
) -> int:
    """Serve until SIGTERM or SIGINT: stop accepting, drain in-flight requests, stop the batcher.
    At most `max_connections` at once, a request's headers within `header_timeout` seconds (guard.py).
    Returns the exit status (0 after SIGTERM, 130 after SIGINT)."""
    import uvicorn

    config = uvicorn.Config(
        app,
        http=guarded_protocol(max_connections, header_timeout),
        log_level="info" if access_log else "warning",
        access_log=access_log,
        timeout_graceful_shutdown=DRAIN_SECONDS,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    received: list[int] = []

    def remember(sig: int, frame: FrameType | None) -> None:
        received.append(sig)

    # uvicorn re-raises the signal it shut down on once it is done, to the handler it found: let that
    # be one that only remembers, so a drained shutdown exits with a status instead of dying of it
    previous: dict[int, Callable[[int, FrameType | None], object] | int | None] = {
        sig: signal.signal(sig, remember) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    return 130 if signal.SIGINT in received else 0
