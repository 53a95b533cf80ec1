"""Every failure leaves the API as an OperationOutcome (status from `hub.errors`)."""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

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

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        return unexpected_response(exc)


def unexpected_response(exc: Exception) -> Response:
    """A 500 OperationOutcome naming only the exception's type; the rest goes to the log."""
    log.error("unexpected error", exc_info=exc)
    return error_response(HubError(f"Internal error: {type(exc).__name__}"))
