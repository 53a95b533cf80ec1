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
from hub.interactions.routes import OPERATIONS, SYSTEM_INTERACTIONS, TYPE_INTERACTIONS
from hub.interactions.writes import instant, now
from hub.search.registry import COMMON, SPECIAL
from hub.store.repository import Transaction

_SPEC = "http://hl7.org/fhir/SearchParameter"


def _resource(ctx: Context, resource_type: str) -> dict[str, Any]:
    params = [
        {"name": code, "definition": f"{_SPEC}/Resource-{code.lstrip('_')}", "type": kind}
        for code, kind in SPECIAL.items()
    ]
    registered = ctx.registry.for_type(resource_type)
    for param in sorted(registered.values(), key=lambda p: p.code):
        entry = {"name": param.code, "type": param.type}
        base = "Resource" if param.base == (COMMON,) else resource_type
        entry["definition"] = (
            param.url or param.canonical or f"{_SPEC}/{base}-{param.code.lstrip('_')}"
        )
        params.append(entry)
    references = sorted(p.code for p in registered.values() if p.type == "reference")
    statement: dict[str, Any] = {
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
        "searchInclude": ["*", *(f"{resource_type}:{code}" for code in references)],
        "searchRevInclude": sorted(
            f"{source}:{p.code}"
            for source, by_code in ctx.registry.by_type.items()
            if source != COMMON
            for p in by_code.values()
            if p.type == "reference" and resource_type in p.target_types()
        ),
        "searchParam": params,
    }
    if resource_type == "Patient":
        statement["operation"] = [
            {"name": name, "definition": url} for name, url in OPERATIONS.items()
        ]
    return statement


def capabilities(ctx: Context, req: Request, tx: Transaction | None = None) -> Result:
    statement = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        # An instance's statement, made now from the registry as it stands.
        "date": instant(now()),
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
