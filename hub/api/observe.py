"""Each request's id, log line and metrics, around every route.

The id is the client's `X-Request-ID` when it sends a usable one (so a caller's
trace runs through the hub), else a new one; it is answered in `X-Request-ID`
and set in `hub.logs.request_id` for every line logged meanwhile. The log line
and the metrics name the interaction (`read`, `search-type`, `$everything`, ...)
that `handle` found for the request, or the route's path for other endpoints:
never the query string, which can hold names and birth dates.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub.logs import request_id

from .metrics import Metrics

log = logging.getLogger("hub.requests")
HEADER = b"x-request-id"
_USABLE = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def note(scope: Scope, interaction: str) -> None:
    """Name what this request is, for its log line and metrics."""
    scope.setdefault("state", {})["interaction"] = interaction


def interaction_of(scope: Scope) -> str:
    """What a request was, as `handle` noted it, else the path of the route it matched."""
    state: dict[str, Any] = scope.get("state") or {}
    noted = state.get("interaction")
    if noted:
        return str(noted)
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class Observe:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope.get("headers") or ()).get(HEADER, b"")
        rid = sent.decode() if _USABLE.fullmatch(sent) else uuid.uuid4().hex
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500  # unless a response starts

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (HEADER, rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            interaction = interaction_of(scope)
            self.metrics.observe(interaction, scope["method"], status, seconds)
            log.info("%s %s %s %.1f ms", scope["method"], interaction, status, seconds * 1000)
            request_id.reset(token)
