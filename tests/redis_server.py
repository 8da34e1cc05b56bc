"""A redis-server of a test's own, for stopping Redis "mid-test": the shared server the
other suites use is never stopped."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def own_redis(settings: Any) -> Iterator[subprocess.Popen[bytes]]:
    """Start a redis-server on a free port and point the rate limiter at it
    (``RATE_LIMIT_REDIS_URL``); kill the process to take Redis away."""
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    settings.RATE_LIMIT_REDIS_URL = f"redis://127.0.0.1:{port}/0"
    yield process
    process.kill()
    process.wait()
