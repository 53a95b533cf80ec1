"""Pieces of the Bundles the hub answers (searchset, history, batch/transaction-response).

Stored resources go into a Bundle as `orjson.Fragment`s: their stored bytes
are spliced in as they are, never parsed or re-serialised.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode

import orjson

from hub.interactions.context import etag
from hub.interactions.writes import instant
from hub.store.repository import Version


def status_line(status: int) -> str:
    return f"{status} {HTTPStatus(status).phrase}"


def stored(version: Version) -> orjson.Fragment:
    assert version.content is not None
    return orjson.Fragment(version.content)


def full_url(base_url: str, version: Version) -> str:
    return f"{base_url}/{version.resource_type}/{version.resource_id}"


def version_response(version: Version, status: int, *, location: bool = False) -> dict[str, Any]:
    """`Bundle.entry.response` for a stored version (history, transaction-response)."""
    out = {"status": status_line(status)}
    if location:
        out["location"] = (
            f"{version.resource_type}/{version.resource_id}/_history/{version.version_id}"
        )
    out["etag"] = etag(version)
    out["lastModified"] = instant(version.last_updated)
    return out


def link(relation: str, url: str, params: list[tuple[str, str]]) -> dict[str, str]:
    return {"relation": relation, "url": f"{url}?{urlencode(params)}" if params else url}


def bundle(
    kind: str, entries: list[dict[str, Any]], links: list[dict[str, str]], total: int | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Bundle", "type": kind}
    if total is not None:
        out["total"] = total
    if links:
        out["link"] = links
    out["entry"] = entries
    return out
