"""No route holds the event loop while it waits for the database.

Each feed route is made slow where it calls the ingestion service (the call blocks
until the test lets it go) and sent to a real uvicorn server; while it is stuck,
`GET /fhir/metadata` goes to the same server. It must be answered before the slow
call is released: had the route called the service on the event loop, nothing else
could be answered until then. Ordering is asserted, not timings: the slow call is
let go after a generous while anyway, so a blocked loop fails the test instead of
hanging it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from live_server import serving

from hub.api import create_app
from hub.interactions.context import Context
from hub.settings import Settings

GIVE_UP_SECONDS = 20.0


@pytest.fixture()
def served(ctx: Context, settings: Settings) -> Iterator[tuple[FastAPI, str]]:
    app = create_app(settings, ctx)
    with serving(app) as root:
        yield app, root


class Gate:
    """Wraps a blocking call: it says when it is entered, then waits to be let go."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()
        self.events: list[str] = []
        self._lock = threading.Lock()

    def record(self, event: str) -> None:
        with self._lock:
            self.events.append(event)

    def wrap(self, call: Callable[..., Any]) -> Callable[..., Any]:
        def slow(*args: Any, **kwargs: Any) -> Any:
            self.entered.set()
            self.released.wait(GIVE_UP_SECONDS)
            self.record("released")
            return call(*args, **kwargs)

        return slow


# (what is made slow: "store" or "service" and its method; the request that calls it)
SLOW_REQUESTS = [
    ("service", "ingest", "POST", "/ingest/csv?mapping=synthea-patients", b"Id\n1\n"),
    ("store", "find", "GET", "/messages", None),
    ("store", "get", "GET", "/messages/1", None),
    ("service", "retry", "POST", "/messages/1/retry", None),
    ("service", "replay", "POST", "/messages/1/replay", None),
    ("store", "ids", "POST", "/messages/replay", None),
]


@pytest.mark.parametrize(
    ("owner", "method", "verb", "path", "body"),
    SLOW_REQUESTS,
    ids=[f"{verb} {path.split('?')[0]}" for _, _, verb, path, _ in SLOW_REQUESTS],
)
def test_a_slow_feed_request_does_not_stop_other_requests(
    served: tuple[FastAPI, str],
    monkeypatch: pytest.MonkeyPatch,
    owner: str,
    method: str,
    verb: str,
    path: str,
    body: bytes | None,
) -> None:
    app, url = served
    service = app.state.ingest
    target = service if owner == "service" else service.store
    gate = Gate()
    monkeypatch.setattr(target, method, gate.wrap(getattr(target, method)))

    def slow_request() -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            client.request(verb, path, content=body, headers={"Content-Type": "text/csv"})
        gate.record("slow answered")

    slow = threading.Thread(target=slow_request, daemon=True)
    slow.start()
    try:
        assert gate.entered.wait(30), "the slow request never reached the service"
        with httpx.Client(base_url=url, timeout=60) as client:
            metadata = client.get("/fhir/metadata")
        gate.record("metadata answered")
        assert metadata.status_code == 200
    finally:
        gate.released.set()
        slow.join(timeout=60)
    assert gate.events == ["metadata answered", "released", "slow answered"]
