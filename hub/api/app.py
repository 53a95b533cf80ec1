"""The FastAPI application: routes that translate HTTP and nothing else."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from datetime import timedelta

import anyio.to_thread
from fastapi import APIRouter, FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from adapters.hl7v2.receive import Receiver, build_receiver
from hub import __version__
from hub.assembly import build_context, ingest_service
from hub.interactions.context import Context
from hub.interactions.routes import dispatch, interaction_name
from hub.settings import Settings, get_settings
from hub.store.cancel import Cancellation

from . import errors, operations
from . import hl7v2 as hl7v2_routes
from . import ingest as ingest_routes
from .disconnect import cancel_when_gone
from .http import to_request, to_response
from .metrics import Metrics
from .observe import Observe, note
from .reads import ReadsById
from .turns import ConditionalCreateTurns

FHIR_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


# Something that runs beside the API while it serves (the MLLP listener of `hub serve`):
# entered once the app has started, left before its parts close.
Companion = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def create_app(
    settings: Settings | None = None,
    context: Context | None = None,
    companions: Sequence[Companion] = (),
) -> FastAPI:
    """The API over `context`, or over parts assembled from `settings` (`hub.assembly`),
    which the app then closes when it stops."""
    settings = settings or get_settings()
    ctx = context or build_context(settings)
    feeds = ingest_service(settings, ctx)
    hl7v2: Receiver | None = None
    if "hl7v2" in feeds.adapters.enabled:
        hl7v2 = build_receiver(feeds, settings)
    metrics = Metrics()
    metrics.watch_feeds(feeds.store.counts, feeds.dispatcher.backlog)

    @asynccontextmanager
    async def lifespan(served: FastAPI) -> AsyncIterator[None]:
        # As many request threads as pooled connections: no thread waits for a
        # connection and no connection is opened beyond the pool.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.db_pool_size
        if ctx.reader is not None:
            await ctx.reader.open()
        if feeds.mode == "threads":
            # Embedded mode: this process works the message store, sweeper included.
            feeds.start_sweeper()
            stale = await run_in_threadpool(feeds.store.stale, timedelta(0))
            feeds.dispatcher.submit(stale)
        async with AsyncExitStack() as running:
            for companion in companions:
                await running.enter_async_context(companion(served))
            yield
        if hl7v2 is not None:
            await hl7v2.close()  # commits what was received, before the store closes
        # Waits for the ingest threads' batches in hand: in a thread, off the event loop.
        await run_in_threadpool(feeds.close)
        if ctx.reader is not None:
            await ctx.reader.close()
        if context is None:
            await run_in_threadpool(ctx.repo.close)

    app = FastAPI(
        title="fhir-hub",
        version=__version__,
        description="FHIR R4 REST API (application/fhir+json)",
        lifespan=lifespan,
    )
    app.state.context = ctx
    app.state.ingest = feeds
    app.state.hl7v2 = hl7v2
    app.state.metrics = metrics
    errors.install(app)
    app.add_middleware(ReadsById, ctx=ctx, settings=settings)
    app.add_middleware(ConditionalCreateTurns, settings=settings)
    app.add_middleware(errors.Unexpected)  # after any error, keep-alive holds
    app.add_middleware(Observe, metrics=metrics)  # outermost: sees every answer, 500s too
    app.include_router(ingest_routes.router(settings.max_body_bytes))
    if hl7v2 is not None:
        app.include_router(hl7v2_routes.router(settings.max_body_bytes))
    router = APIRouter(prefix=settings.base_path)

    async def handle(http: Request, **parts: str | None) -> Response:
        req = await to_request(http, settings, **parts)
        note(http.scope, interaction_name(req))
        # A client that goes away stops the request's searches (docs/search.md#limits).
        req.cancel = Cancellation()
        watcher = asyncio.ensure_future(cancel_when_gone(http, req.cancel))
        try:
            result = await run_in_threadpool(dispatch, ctx, req)
        finally:
            watcher.cancel()
        return to_response(req, result)

    @router.api_route("/metadata", methods=["GET", "HEAD"], summary="CapabilityStatement")
    async def metadata(request: Request) -> Response:
        return await handle(request, operation="metadata")

    @router.api_route("/_history", methods=["GET", "HEAD"], summary="System history")
    async def system_history(request: Request) -> Response:
        return await handle(request, operation="_history")

    @router.api_route("", methods=["GET", "HEAD", "POST"], include_in_schema=False)
    @router.api_route(
        "/",
        methods=["GET", "HEAD", "POST"],
        summary="Batch or transaction Bundle (POST); system search (GET ?_type=)",
    )
    async def system(request: Request) -> Response:
        return await handle(request)

    @router.api_route("/_search", methods=["POST"], summary="System search by form post")
    async def system_search(request: Request) -> Response:
        return await handle(request, operation="_search")

    # Before the /{resource_type} routes, which would take "$reindex" for a type.
    @router.api_route(
        "/$reindex",
        methods=["GET", "HEAD", "POST"],
        summary="Start a reindex job (POST, optional _type); a job's progress (GET ?job=)",
    )
    async def reindex(request: Request) -> Response:
        return await handle(request, operation="$reindex")

    @router.api_route("/$reindex/{job_id}", methods=FHIR_METHODS, summary="A reindex job")
    async def reindex_job(request: Request, job_id: str) -> Response:
        return await handle(request, operation="$reindex", resource_id=job_id)

    # Any other operation: the routing table answers it (an unknown one 404).
    # Every method, so that the table answers 405 for a method an operation does not take.
    @router.api_route("/${name}", methods=FHIR_METHODS, summary="A system-level operation")
    async def system_operation(request: Request, name: str) -> Response:
        return await handle(request, operation=f"${name}")

    @router.api_route(
        "/{resource_type}",
        methods=FHIR_METHODS,
        summary="Search, create, conditional update/patch/delete",
    )
    async def type_level(request: Request, resource_type: str) -> Response:
        return await handle(request, resource_type=resource_type)

    # Before /{resource_type}/{resource_id}, which would take "$name" for an id.
    @router.api_route(
        "/{resource_type}/${name}",
        methods=FHIR_METHODS,
        summary="A type-level operation",
    )
    async def type_operation(request: Request, resource_type: str, name: str) -> Response:
        return await handle(request, resource_type=resource_type, operation=f"${name}")

    @router.api_route("/{resource_type}/_search", methods=["POST"], summary="Search by form post")
    async def type_search(request: Request, resource_type: str) -> Response:
        return await handle(request, resource_type=resource_type, operation="_search")

    @router.api_route("/{resource_type}/_history", methods=["GET"], summary="Type history")
    async def type_history(request: Request, resource_type: str) -> Response:
        return await handle(request, resource_type=resource_type, operation="_history")

    @router.api_route(
        "/{resource_type}/{resource_id}",
        methods=FHIR_METHODS,
        summary="Read, update, patch, delete",
    )
    async def instance(request: Request, resource_type: str, resource_id: str) -> Response:
        return await handle(request, resource_type=resource_type, resource_id=resource_id)

    @router.api_route(
        "/{resource_type}/{resource_id}/_history", methods=["GET"], summary="Instance history"
    )
    async def instance_history(request: Request, resource_type: str, resource_id: str) -> Response:
        return await handle(
            request, resource_type=resource_type, resource_id=resource_id, operation="_history"
        )

    @router.api_route(
        "/{resource_type}/{resource_id}/{operation}",
        methods=FHIR_METHODS,
        summary="Compartment search (Patient/1/Observation) or an operation ($everything)",
    )
    async def instance_operation(
        request: Request, resource_type: str, resource_id: str, operation: str
    ) -> Response:
        return await handle(
            request, resource_type=resource_type, resource_id=resource_id, operation=operation
        )

    @router.api_route(
        "/{resource_type}/{resource_id}/_history/{version_id}",
        methods=["GET"],
        summary="Version read",
    )
    async def version(
        request: Request, resource_type: str, resource_id: str, version_id: str
    ) -> Response:
        return await handle(
            request,
            resource_type=resource_type,
            resource_id=resource_id,
            operation="_history",
            version_id=version_id,
        )

    app.include_router(router)
    app.include_router(operations.router(ctx, feeds, metrics))
    return app
