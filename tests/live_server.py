"""A uvicorn server on a thread, on an ephemeral port of 127.0.0.1, for the server tests."""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn

from fastmarco.serve.server import bind


class LiveServer:
    """A uvicorn server on a thread, on an ephemeral port of 127.0.0.1."""

    def __init__(self, app: Any, http: Any = "auto") -> None:
        self.sock = bind("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, http=http, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()
