"""A testing aid for crash tests: pause (until killed) at a known point of a long job, named by an
environment variable, so a test kills the job there instead of racing it."""

from __future__ import annotations

import os
import sys
import time


def pause_if_asked(variable: str, reached: int, unit: str) -> None:
    """Sleep forever once `reached` is at least the value of `variable`, saying so on stderr."""
    wanted = os.environ.get(variable)
    if wanted is not None and reached >= int(wanted):
        print(f"fastmarco: paused after {reached} {unit} ({variable})", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
