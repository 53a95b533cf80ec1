"""Turning HTTP into interaction requests and results back into HTTP.

Content negotiation, size limits, headers and Prefer live here; no SQL and no
FHIR rules do.
"""

from __future__ import annotations

from email.utils import format_datetime, parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import Request as HttpRequest
from fastapi import Response
from starlette.requests import HTTPConnection
from starlette.types import Scope

from hub.errors import (
    Invalid,
    NotAcceptable,
    PayloadTooLarge,
    UnsupportedMediaType,
    information,
)
from hub.fhir import jsonbytes
from hub.interactions.context import Request, Result, etag, version_location
from hub.settings import Settings

FHIR_JSON = "application/fhir+json; charset=utf-8"
_JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")
_PATCH_TYPES = ("application/json-patch+json",)
_FORM = "application/x-www-form-urlencoded"
_WRITES = ("POST", "PUT", "PATCH")
# What a response can be: JSON only (docs/api.md says why not XML).
_JSON_FORMATS = frozenset({"json", *_JSON_TYPES})
_JSON_RANGES = frozenset({"*/*", "application/*", *_JSON_TYPES})


def header(scope: Scope, name: bytes) -> str | None:
    """A request header straight from the ASGI scope (`name` in lower case)."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def base_url(scope: Scope, settings: Settings) -> str:
    """The FHIR base the client used: the configured public one, or the request's own
    (Starlette's, which ignores a malformed Host header)."""
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/")
    return str(HTTPConnection(scope).base_url).rstrip("/") + settings.base_path


async def read_body(http: HttpRequest, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is over `limit` bytes (declared or
    read): a huge upload is never held in memory."""
    declared = http.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body of {declared} bytes exceeds the limit of {limit}")
    chunks = []
    size = 0
    async for chunk in http.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _media_type(http: HttpRequest) -> str:
    return http.headers.get("content-type", "").split(";")[0].strip().lower()


def accepts_json(accept: str | None) -> bool:
    """Whether an Accept header admits a JSON answer (no header admits anything)."""
    if not accept or not accept.strip():
        return True
    for media_range in accept.split(","):
        media, *params = (p.strip().lower() for p in media_range.split(";"))
        if media not in _JSON_RANGES:
            continue
        q = next((p[2:].strip() for p in params if p.startswith("q=")), "1")
        try:
            if float(q) > 0:
                return True
        except ValueError:
            return True  # a malformed weight is no refusal
    return False


def negotiate(accept: str | None, params: list[tuple[str, str]]) -> None:
    """Refuse (406) a request whose `_format`, or else whose Accept header, rules out JSON:
    the hub answers nothing else. `_format` overrides Accept, as the spec says."""
    formats = [value for name, value in params if name == "_format"]
    if formats:
        # An unencoded '+' in the query string arrives as a space: application/fhir json.
        wanted = formats[-1].split(";")[0].strip().lower().replace(" ", "+")
        if wanted not in _JSON_FORMATS:
            raise NotAcceptable(
                f"_format '{formats[-1]}' is not available: this server answers "
                "application/fhir+json only",
                expression=("_format",),
            )
    elif not accepts_json(accept):
        raise NotAcceptable(
            f"Accept '{accept}' admits no JSON: this server answers application/fhir+json only"
        )


def _check_media(method: str, operation: str | None, media: str) -> None:
    """A body must name its media type, and one the interaction takes (else 415)."""
    if operation == "_search":
        accepted: tuple[str, ...] = (_FORM,)
    elif method == "PATCH":
        accepted = _PATCH_TYPES  # JSON Patch; FHIRPath Patch (a Parameters body) is not offered
    else:
        accepted = _JSON_TYPES
    if media not in accepted:
        sent = f"Content-Type '{media}'" if media else "A body without a Content-Type"
        raise UnsupportedMediaType(f"{sent} is not supported here; use {' or '.join(accepted[:2])}")


def _parse_json(raw: bytes) -> Any:
    try:
        return jsonbytes.loads(raw)
    except orjson.JSONDecodeError as e:
        raise Invalid(f"The request body is not valid JSON: {e}") from None


def _prefer(http: HttpRequest, wanted: str) -> str | None:
    for part in http.headers.get("prefer", "").replace(";", ",").split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == wanted:
            return value.strip().strip('"')
    return None


def http_date(value: str | None) -> Any:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None


async def to_request(
    http: HttpRequest,
    settings: Settings,
    *,
    resource_type: str | None = None,
    resource_id: str | None = None,
    operation: str | None = None,
    version_id: str | None = None,
) -> Request:
    method = "GET" if http.method == "HEAD" else http.method
    params = parse_qsl(http.url.query, keep_blank_values=True)
    negotiate(http.headers.get("accept"), params)
    body: Any = None
    if method in _WRITES:
        raw = await read_body(http, settings.max_body_bytes)
        if raw:
            _check_media(method, operation, _media_type(http))
        if operation == "_search":
            params += parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)
        elif raw:
            body = _parse_json(raw)
        elif not (operation or "").startswith("$"):
            raise Invalid("The request has no body")
    return Request(
        method=method,
        base_url=base_url(http.scope, settings),
        resource_type=resource_type,
        resource_id=resource_id,
        version_id=version_id,
        operation=operation,
        params=params,
        body=body,
        if_match=http.headers.get("if-match"),
        if_none_exist=http.headers.get("if-none-exist"),
        if_none_match=http.headers.get("if-none-match"),
        if_modified_since=http_date(http.headers.get("if-modified-since")),
        prefer_return=_prefer(http, "return"),
        prefer_handling=_prefer(http, "handling"),
    )


def to_response(req: Request, result: Result) -> Response:
    headers = dict(result.headers)
    content: bytes = b""
    version = result.version
    if version is not None:
        headers["ETag"] = etag(version)
        headers["Last-Modified"] = format_datetime(version.last_updated, usegmt=True)
        if result.location:
            headers["Location"] = version_location(req.base_url, version)
        if req.method in _WRITES and req.prefer_return == "minimal":
            content = b""
        elif req.method in _WRITES and req.prefer_return == "OperationOutcome":
            content = orjson.dumps(
                information(
                    f"{version.resource_type}/{version.resource_id} "
                    f"version {version.version_id} stored"
                )
            )
        else:
            content = version.content or b""
    elif result.body is not None:
        content = orjson.dumps(result.body)
    elif req.prefer_return == "OperationOutcome" and result.status == 204:
        return Response(orjson.dumps(information("Deleted")), 200, headers, FHIR_JSON)
    if result.status in (204, 304):
        return Response(status_code=result.status, headers=headers)
    return Response(content, result.status, headers, FHIR_JSON)
