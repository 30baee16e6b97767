"""Connections that hold the server without asking it anything (slowloris): ~20,000 idle, half-sent
requests once used up the file descriptors and took the server down for everyone.

uvicorn times out idle kept-alive connections but not a request whose headers never finish, and it
caps no connection count. The protocol here does both: a request's headers must arrive within
`header_timeout` seconds of its first byte (or of the connection), and past `max_connections` the
oldest connection still waiting for its headers is closed to make room, so a client that sends a
whole request at once (a health probe) always gets in.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_CONNECTIONS = 1_000
HEADER_TIMEOUT_SECONDS = 10.0


def guarded_protocol(
    max_connections: int = MAX_CONNECTIONS, header_timeout: float = HEADER_TIMEOUT_SECONDS
) -> type[HttpToolsProtocol]:
    """An HTTP protocol class for `uvicorn.Config(http=...)` with these bounds (one per server)."""
    # connections waiting for a request's headers, oldest first, with the timer that drops each
    waiting: dict[Guarded, asyncio.TimerHandle] = {}

    class Guarded(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._wait_for_headers()
            if len(self.connections) > max_connections:
                oldest = next((other for other in waiting if other is not self), None)
                (oldest or self).drop()

        def on_message_begin(self) -> None:  # a kept-alive connection's next request is timed too
            super().on_message_begin()
            self._wait_for_headers()

        def on_headers_complete(self) -> None:
            self._stop_waiting()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_waiting()
            super().connection_lost(exc)

        def drop(self) -> None:
            self._stop_waiting()
            if not self.transport.is_closing():
                self.transport.close()

        def _wait_for_headers(self) -> None:
            if self not in waiting:
                waiting[self] = self.loop.call_later(header_timeout, self.drop)

        def _stop_waiting(self) -> None:
            timer = waiting.pop(self, None)
            if timer is not None:
                timer.cancel()

    return Guarded
