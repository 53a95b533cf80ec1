"""Feed ingestion and message operations over HTTP (JSON, not FHIR).

`POST /ingest/{adapter}` takes the same input as `hub ingest`; `/messages`
lists, shows, retries and replays stored messages.

Every call of the service waits for the database, so none runs on the event loop:
the ingest route reads its body there and then hands the work to a request thread;
the others are plain `def` routes, which FastAPI runs in the same request threads
(as many as pooled connections, see `hub.api.app`).
"""

from __future__ import annotations

import base64
import io
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from hub.errors import Invalid, NotFound
from hub.ingest.messages import STATUSES
from hub.ingest.service import IngestService

from .http import read_body


def _service(request: Request) -> IngestService:
    service: IngestService = request.app.state.ingest
    return service


def router(max_body: int) -> APIRouter:
    api = APIRouter(tags=["ingestion"])

    @api.post("/ingest/{adapter}", status_code=202, summary="Ingest a feed file or message")
    async def ingest(
        request: Request,
        adapter: str,
        mapping: str | None = Query(None, description="mapping name (mappings/<adapter>/)"),
        source: str | None = Query(None, description="source system (default: the mapping's)"),
        wait: bool = Query(False, description="answer only once every unit is processed"),
    ) -> dict[str, Any]:
        body = await read_body(request, max_body)
        if not body:
            raise Invalid("The request has no body")
        service = _service(request)
        summary = await run_in_threadpool(
            service.ingest,
            adapter,
            mapping,
            io.BytesIO(body),
            f"POST /ingest/{adapter}",
            source=source,
            content_type=request.headers.get("content-type"),
            wait=wait,
        )
        return {**summary.to_json(), "messages": summary.message_ids[:1000]}

    @api.get("/messages", summary="List stored messages, newest first")
    def list_messages(
        request: Request,
        status: str | None = Query(None, description=f"one of {', '.join(STATUSES)}"),
        source: str | None = None,
        count: int = Query(100, alias="_count", ge=1, le=1000),
        before: int | None = Query(None, description="only ids below this (paging)"),
    ) -> dict[str, Any]:
        if status is not None and status not in STATUSES:
            raise Invalid(f"status must be one of {', '.join(STATUSES)}")
        found = _service(request).store.find(status, source, count, before)
        out: dict[str, Any] = {"messages": [m.summary() for m in found]}
        if len(found) == count:
            out["next"] = str(request.url.include_query_params(before=found[-1].id))
        return out

    @api.get("/messages/{message_id}", summary="One message: raw content, error, produced")
    def show(request: Request, message_id: int) -> dict[str, Any]:
        service = _service(request)
        message = service.store.get(message_id)
        if message is None:
            raise NotFound(f"message {message_id} is not known")
        try:
            raw: dict[str, str] = {"text": message.raw.decode("utf-8")}
        except UnicodeDecodeError:
            raw = {"base64": base64.b64encode(message.raw).decode()}
        return {
            **message.summary(),
            "raw": raw,
            "lineage": service.store.lineage_for_message(message_id),
        }

    @api.post("/messages/{message_id}/retry", summary="Retry a failed or dead message")
    def retry(request: Request, message_id: int) -> dict[str, Any]:
        return {"reopened": _service(request).retry([message_id])}

    @api.post("/messages/{message_id}/replay", summary="Run a message again (current mappings)")
    def replay(request: Request, message_id: int) -> dict[str, Any]:
        return {"reopened": _service(request).replay([message_id])}

    @api.post("/messages/replay", summary="Replay every message of a source in a time window")
    def replay_many(
        request: Request,
        source: str | None = None,
        since: datetime | None = Query(None, description="received at or after"),
        until: datetime | None = Query(None, description="received before"),
    ) -> dict[str, Any]:
        service = _service(request)
        ids = service.store.ids(source=source, since=since, until=until)
        return {"reopened": len(service.replay(ids))}

    return api
