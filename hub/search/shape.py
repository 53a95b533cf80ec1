"""`_summary` and `_elements`: what a client asked to see of each resource.

Only these paths parse and re-serialise stored JSON; a plain search serves
the stored bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from hub.fhir import mandatory_elements, summary_elements
from hub.fhir.jsonbytes import dumps

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
}


def _subsetted(resource: dict[str, Any]) -> dict[str, Any]:
    meta = dict(resource.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    resource["meta"] = meta
    return resource


def shape(content: bytes, summary: str | None, elements: Sequence[str]) -> bytes:
    if summary is None and not elements:
        return content
    resource: dict[str, Any] = orjson.loads(content)
    resource_type = resource["resourceType"]
    if summary == "true":
        keep = summary_elements(resource_type)
    elif summary == "text":
        keep = mandatory_elements(resource_type) | {"text"}
    elif summary == "data":
        keep = frozenset(k for k in resource if k != "text")
    else:
        keep = mandatory_elements(resource_type) | set(elements) | {f"_{e}" for e in elements}
    shaped = {k: v for k, v in resource.items() if k in keep}
    return dumps(_subsetted(shaped))
