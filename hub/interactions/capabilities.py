"""capabilities: https://hl7.org/fhir/R4/http.html#capabilities

The CapabilityStatement is generated from what the code supports: the
resource types the validator knows, the interactions and operations of the
routing table that serves requests (`hub.interactions.routes.ROUTES`, passed
in), and the search parameters in the registry. Nothing in it is written by hand.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from hub import __version__
from hub.fhir import R4_RESOURCE_TYPES
from hub.interactions.context import Context, Request, Result
from hub.interactions.route import COMPARTMENT, Route
from hub.interactions.writes import instant, now
from hub.search.registry import COMMON, SPECIAL

_SPEC = "http://hl7.org/fhir/SearchParameter"
_COMPARTMENTS = "http://hl7.org/fhir/CompartmentDefinition"


def _codes(routes: Iterable[Route]) -> list[dict[str, str]]:
    """The interaction codes of `routes`, each once, in table order."""
    codes = dict.fromkeys(r.code for r in routes if r.code is not None)
    return [{"code": code} for code in codes]


def _operations(routes: Iterable[Route]) -> list[dict[str, str]]:
    named = {r.name: r.definition for r in routes if r.name is not None and r.definition}
    return [{"name": name, "definition": url} for name, url in named.items()]


def _resource(ctx: Context, resource_type: str, routes: Sequence[Route]) -> dict[str, Any]:
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
        "interaction": _codes(routes),
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": True,
        "conditionalCreate": True,
        "conditionalRead": "not-supported",
        "conditionalUpdate": any(r.needs_criteria and "PUT" in r.methods for r in routes),
        "conditionalDelete": (
            "single"
            if any(r.needs_criteria and "DELETE" in r.methods for r in routes)
            else "not-supported"
        ),
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
    operations = _operations(routes)
    if operations:
        statement["operation"] = operations
    return statement


def capabilities(ctx: Context, req: Request, routes: Sequence[Route]) -> Result:
    """The statement of what `routes` serve, made now from the registry as it stands."""
    system = [r for r in routes if r.level == "system"]
    served = [r for r in routes if r.level != "system"]
    rest: dict[str, Any] = {
        "mode": "server",
        "resource": [
            _resource(ctx, t, [r for r in served if r.applies_to(t)])
            for t in sorted(R4_RESOURCE_TYPES)
        ],
        "interaction": _codes(system),
    }
    operations = _operations(system)
    if operations:
        rest["operation"] = operations
    if any(r.operation == COMPARTMENT for r in served):
        rest["compartment"] = [
            # The definitions' ids: patient, encounter, relatedPerson, practitioner, device.
            f"{_COMPARTMENTS}/{name[0].lower()}{name[1:]}"
            for name in sorted(ctx.registry.compartments)
        ]
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
        "rest": [rest],
    }
    return Result(200, body=statement)
