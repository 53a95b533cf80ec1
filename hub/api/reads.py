"""Reads by id answered ahead of FastAPI's routing, on the event loop.

`GET [base]/{type}/{id}` is the request a FHIR server answers most. Through the
route table and FastAPI's dependency solving it cost several times the read
itself (docs/benchmarks.md), so this ASGI middleware recognises exactly that
request and answers it with the same interaction (`read.read_async`), the same
response building and the same error mapping as every route. Anything else (a
query string, HEAD, another path, SQLite, whose reads stay on threads) passes
through untouched, and so does a read whose Accept header admits no JSON (the
route answers it 406).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from hub.errors import HubError
from hub.fhir import is_resource_type
from hub.fhir.models import ID_PATTERN
from hub.interactions import read
from hub.interactions.context import Context, Request
from hub.settings import Settings

from .errors import error_response, unexpected_response
from .http import accepts_json, base_url, header, http_date, to_response
from .observe import note


class ReadsById:
    def __init__(self, app: ASGIApp, ctx: Context, settings: Settings) -> None:
        self.app = app
        self.ctx = ctx
        self.settings = settings
        self.prefix = settings.base_path + "/"

    def _target(self, scope: Scope) -> tuple[str, str] | None:
        """(type, id) of a plain read by id, else None."""
        reader = self.ctx.reader
        if (
            scope["type"] != "http"
            or scope["method"] != "GET"
            or scope["query_string"]
            or reader is None
            or not reader.opened
        ):
            return None
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):  # behind a proxy prefix or a mount: the app's path
            path = path[len(root) :]
        if not path.startswith(self.prefix):
            return None
        resource_type, _, resource_id = path[len(self.prefix) :].partition("/")
        if not is_resource_type(resource_type) or not ID_PATTERN.match(resource_id):
            return None
        if not accepts_json(header(scope, b"accept")):
            return None
        return resource_type, resource_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = self._target(scope)
        if target is None:
            await self.app(scope, receive, send)
            return
        note(scope, "read")
        req = Request(
            method="GET",
            base_url=base_url(scope, self.settings),
            resource_type=target[0],
            resource_id=target[1],
            if_none_match=header(scope, b"if-none-match"),
            if_modified_since=http_date(header(scope, b"if-modified-since")),
        )
        try:
            response = to_response(req, await read.read_async(self.ctx, req))
        except HubError as e:
            response = error_response(e)
        except Exception as e:
            response = unexpected_response(e)
        await response(scope, receive, send)
