"""Every failure leaves the API as an OperationOutcome (status from `hub.errors`)."""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub.errors import (
    HubError,
    Invalid,
    MethodNotAllowed,
    NotFound,
    Unsupported,
    outcome_of,
    status_of,
)

from .http import FHIR_JSON

log = logging.getLogger("hub.api")


def error_response(error: HubError) -> Response:
    return Response(orjson.dumps(outcome_of(error)), status_of(error), error.headers, FHIR_JSON)


def install(app: FastAPI) -> None:
    @app.exception_handler(HubError)
    async def _hub(_: Request, exc: HubError) -> Response:
        return error_response(exc)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            return error_response(NotFound(f"No FHIR endpoint at {request.url.path}"))
        if exc.status_code == 405:
            return error_response(
                MethodNotAllowed(f"{request.method} is not supported on {request.url.path}")
            )
        return error_response(Unsupported(str(exc.detail)))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        return error_response(Invalid(f"Invalid request: {exc.errors()}"))


class Unexpected:
    """ASGI middleware answering any other exception with a 500 OperationOutcome.

    Not an exception handler for `Exception`: Starlette runs that one in its
    ServerErrorMiddleware, which re-raises after answering, and uvicorn then closes
    the connection, so a client's keep-alive connection would not outlive a 500.
    This middleware answers and returns, and the connection stays usable.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            if started:
                raise  # half an answer is out: only closing the connection can end it
            await unexpected_response(exc)(scope, receive, send)


def unexpected_response(exc: Exception) -> Response:
    """A 500 OperationOutcome naming only the exception's type; the rest goes to the log."""
    log.error("unexpected error", exc_info=exc)
    return error_response(HubError(f"Internal error: {type(exc).__name__}"))
