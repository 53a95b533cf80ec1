"""What a process supervisor and a monitor ask: alive, ready, metrics.

`/healthz` answers while the process serves at all (a liveness probe restarts it
otherwise). `/readyz` answers 200 only when requests can succeed: the database
answers and is migrated to the head revision this code needs, and the broker (when
feeds go through one) answers; otherwise 503 naming what is not ready, so a load
balancer sends no traffic. Each check is bounded by HUB_READINESS_TIMEOUT_SECONDS.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from hub.ingest.service import IngestService
from hub.interactions.context import Context
from hub.store import migrate

from .metrics import Metrics


async def _bounded(check: Callable[[], str | None], timeout: float) -> str | None:
    """None when `check` passes in time, else why not."""
    try:
        return await asyncio.wait_for(run_in_threadpool(check), timeout)
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except Exception as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")


def router(ctx: Context, feeds: IngestService, metrics: Metrics) -> APIRouter:
    settings = ctx.settings
    routes = APIRouter(include_in_schema=False)
    head = (
        migrate.head(settings.migrations_dir)
        if (settings.migrations_dir / "env.py").exists()
        else None
    )

    def database() -> str | None:
        engine = getattr(ctx.repo, "engine", None)
        if engine is None:
            return None
        at = migrate.revision(engine)
        if head is not None and at != head:
            return f"the database is at revision {at or 'none'}; this hub needs {head}"
        return None

    def broker() -> str | None:
        feeds.dispatcher.check(settings.readiness_timeout_seconds)
        return None

    @routes.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @routes.get("/readyz")
    async def readyz() -> Response:
        timeout = settings.readiness_timeout_seconds
        found = await asyncio.gather(_bounded(database, timeout), _bounded(broker, timeout))
        checks = {
            name: ({"status": "ok"} if problem is None else {"status": "down", "reason": problem})
            for name, problem in zip(("database", "broker"), found, strict=True)
        }
        ready = all(problem is None for problem in found)
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status_code=200 if ready else 503,
        )

    @routes.get("/metrics")
    async def scrape() -> Response:
        # The feed figures are read from the store: off the event loop.
        body = await run_in_threadpool(generate_latest, metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return routes
