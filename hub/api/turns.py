"""Conditional creates with the same criteria take turns, waiting on the event loop.

Two creates with the same `If-None-Exist` cannot both create: the store serialises
them on a lock (`hub.interactions.writes.create_match`). Left to that, a burst of them
(a feed resending, a client retrying) would each hold a request thread and a pooled
connection while waiting, and crowd out every other request. Here the requests of
one process with the same type and criteria go one at a time; the rest wait on the
event loop, holding nothing, at most `HUB_DB_LOCK_TIMEOUT_SECONDS`, and are then
answered 503 with Retry-After. Once the first has created the match, each of the
others finds it at once.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Receive, Scope, Send

from hub.errors import Busy
from hub.interactions.writes import create_lock_name
from hub.settings import Settings

from .errors import error_response
from .http import header


class ConditionalCreateTurns:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.prefix = settings.base_path + "/"
        self.wait = settings.db_lock_timeout_seconds
        self._turns: dict[str, asyncio.Lock] = {}
        self._waiting: dict[str, int] = {}

    def _key(self, scope: Scope) -> str | None:
        """The type and criteria of a conditional create (POST [base]/Type with
        If-None-Exist), else None."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        path: str = scope["path"]
        if not path.startswith(self.prefix) or "/" in path[len(self.prefix) :]:
            return None
        criteria = header(scope, b"if-none-exist")
        resource_type = path[len(self.prefix) :]
        return create_lock_name(resource_type, criteria) if criteria else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = self._key(scope)
        if key is None:
            await self.app(scope, receive, send)
            return
        turn = self._turns.setdefault(key, asyncio.Lock())
        self._waiting[key] = self._waiting.get(key, 0) + 1
        try:
            try:
                async with asyncio.timeout(self.wait):
                    await turn.acquire()
            except TimeoutError:
                await _drain(receive)
                busy = Busy("Other requests with the same If-None-Exist are ahead; retry it")
                await error_response(busy)(scope, receive, send)
                return
            try:
                await self.app(scope, receive, send)
            finally:
                turn.release()
        finally:
            self._waiting[key] -= 1
            if not self._waiting[key]:  # the last of its burst: forget the key
                del self._waiting[key], self._turns[key]


async def _drain(receive: Receive) -> None:
    """Read the body not taken, so the connection can carry the client's next request."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
