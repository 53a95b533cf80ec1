"""A hub app served by real uvicorn in a thread, on a free port, for tests that need real
HTTP connections (keep-alive, the event loop)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from fastapi import FastAPI


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick), for a server a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """The app's root URL while it is served; the server stops when the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert thread.is_alive(), "the server stopped while starting"
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(timeout=30)
        sock.close()


def wait_ready(base: str, trouble: Callable[[], str | None], timeout: float = 60) -> None:
    """Wait for `base`/readyz to answer 200; `trouble()` says why not to wait any more (a
    process that ended, with its output), and is the failure message then."""
    deadline = time.monotonic() + timeout
    while True:
        problem = trouble()
        assert problem is None, problem
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{base} was not ready within {timeout:.0f} s"
        time.sleep(0.2)
