"""A client's connection outlives any error answer, a 500 included.

Runs the app under a real uvicorn server (in a thread of the test process, on a
free port) and talks to it with one httpx connection: uvicorn closes a
connection when the application raises after answering, which an exception
handler for `Exception` does (Starlette re-raises after it). Runs on SQLite and
PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from live_server import serving

from hub.api import create_app
from hub.interactions import routes, search
from hub.interactions.context import Context
from hub.settings import Settings

FHIR = {"Content-Type": "application/fhir+json"}


@pytest.fixture()
def server(ctx: Context, settings: Settings) -> Iterator[str]:
    with serving(create_app(settings, ctx)) as root:
        yield root


def _local_address(response: httpx.Response) -> Any:
    """The client side of the connection that carried `response`."""
    return response.extensions["network_stream"].get_extra_info("client_addr")


def _broken_search(*_: Any) -> Any:
    raise RuntimeError("a bug in the search interaction")


def test_the_connection_outlives_error_answers(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The routing table holds the interactions: the type-level search is broken there.
    broken = tuple(
        replace(r, handler=_broken_search) if r.handler is search.search else r
        for r in routes.ROUTES
    )
    monkeypatch.setattr(routes, "ROUTES", broken)
    with httpx.Client(base_url=server, limits=httpx.Limits(max_connections=1)) as client:
        first = client.get("/fhir/metadata")
        assert first.status_code == 200
        where = _local_address(first)
        answers = [
            client.get("/fhir/Patient?name=x"),  # an unexpected exception: 500
            client.get("/fhir/Patient/unknown"),  # 404
            client.post("/fhir/Patient", content=b"{not json", headers=FHIR),  # 400
            client.get("/fhir/Patient/x", headers={"Accept": "application/fhir+xml"}),  # 406
            client.get("/fhir/metadata"),
        ]
        statuses = [r.status_code for r in answers]
        assert statuses == [500, 404, 400, 406, 200]
        outcome = answers[0].json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["diagnostics"] == "Internal error: RuntimeError"
        assert answers[0].headers["content-type"].startswith("application/fhir+json")
        # Every answer came over the connection the first request opened.
        assert [_local_address(r) for r in answers] == [where] * len(answers)
