"""The FastAPI application: routes that translate HTTP and nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from hub import __version__
from hub.interactions.context import Context
from hub.interactions.routes import dispatch
from hub.search import load_default
from hub.settings import Settings, get_settings
from hub.store import Repository, SqlRepository

from . import errors
from .http import to_request, to_response

FHIR_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


def build_context(settings: Settings, repo: Repository | None = None) -> Context:
    if repo is None:
        repo = SqlRepository.from_url(settings.database_url, settings.db_pool_size)
    return Context(repo=repo, registry=load_default(), settings=settings)


def create_app(settings: Settings | None = None, context: Context | None = None) -> FastAPI:
    settings = settings or get_settings()
    ctx = context or build_context(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if context is None:
            ctx.repo.close()

    app = FastAPI(
        title="fhir-hub",
        version=__version__,
        description="FHIR R4 REST API (application/fhir+json)",
        lifespan=lifespan,
    )
    app.state.context = ctx
    errors.install(app)
    router = APIRouter(prefix=settings.base_path)

    async def handle(http: Request, **parts: str | None) -> Response:
        req = await to_request(http, settings, **parts)
        result = await run_in_threadpool(dispatch, ctx, req)
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

    @router.api_route(
        "/{resource_type}",
        methods=FHIR_METHODS,
        summary="Search, create, conditional update/patch/delete",
    )
    async def type_level(request: Request, resource_type: str) -> Response:
        return await handle(request, resource_type=resource_type)

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
        methods=["GET", "HEAD", "POST"],
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

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
