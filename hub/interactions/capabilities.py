"""capabilities: https://hl7.org/fhir/R4/http.html#capabilities

The CapabilityStatement is generated from what the code supports: the
resource types the validator knows, the interactions `dispatch` routes, and
the search parameters in the registry. Nothing in it is written by hand.
"""

from __future__ import annotations

from typing import Any

from hub import __version__
from hub.fhir import R4_RESOURCE_TYPES
from hub.interactions.context import Context, Request, Result
from hub.interactions.routes import SYSTEM_INTERACTIONS, TYPE_INTERACTIONS
from hub.search.registry import SPECIAL
from hub.store.repository import Transaction

_SPEC = "http://hl7.org/fhir/SearchParameter"


def _resource(ctx: Context, resource_type: str) -> dict[str, Any]:
    params = [
        {"name": code, "definition": f"{_SPEC}/Resource-{code.lstrip('_')}", "type": kind}
        for code, kind in SPECIAL.items()
    ]
    for param in sorted(ctx.registry.for_type(resource_type).values(), key=lambda p: p.code):
        entry = {"name": param.code, "type": param.type}
        entry["definition"] = param.url or f"{_SPEC}/{resource_type}-{param.code}"
        params.append(entry)
    return {
        "type": resource_type,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{resource_type}",
        "interaction": [{"code": code} for code in TYPE_INTERACTIONS],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": True,
        "conditionalCreate": True,
        "conditionalRead": "not-supported",
        "conditionalUpdate": True,
        "conditionalDelete": "single",
        "searchParam": params,
    }


def capabilities(ctx: Context, req: Request, tx: Transaction | None = None) -> Result:
    statement = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-24",
        "kind": "instance",
        "software": {"name": "fhir-hub", "version": __version__},
        "implementation": {"description": "fhir-hub FHIR R4 server", "url": req.base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [
            {
                "mode": "server",
                "resource": [_resource(ctx, t) for t in sorted(R4_RESOURCE_TYPES)],
                "interaction": [{"code": code} for code in SYSTEM_INTERACTIONS],
            }
        ],
    }
    return Result(200, body=statement)
