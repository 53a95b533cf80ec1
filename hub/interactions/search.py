"""search: https://hl7.org/fhir/R4/search.html

Type search (`GET [type]?…`, `POST [type]/_search`), system search
(`GET [base]?_type=…`), compartment search (`GET Patient/123/Observation?…`)
and `Patient/123/$everything`: one engine, different scopes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from hub.errors import Invalid, NotFound, operation_outcome
from hub.fhir import R4_RESOURCE_TYPES, is_resource_type
from hub.interactions.bundles import bundle, full_url, link
from hub.interactions.context import Context, Request, Result
from hub.search.limits import Limits
from hub.search.parse import Include, SearchRequest, encode_cursor, parse
from hub.search.shape import shape
from hub.store.repository import Transaction, Version
from hub.store.search.engine import Compartment, Page, SearchEngine


def _page_size(ctx: Context, request: SearchRequest) -> int:
    if request.count is None:
        return ctx.settings.default_page_size
    return request.count


def _request(
    ctx: Context,
    req: Request,
    types: Sequence[str],
    params: Sequence[tuple[str, str]] | None = None,
) -> SearchRequest:
    return parse(
        ctx.registry,
        types,
        req.params if params is None else params,
        strict=req.prefer_handling != "lenient",
        max_count=ctx.settings.max_page_size,
        limits=Limits.of(ctx.settings),
    )


def _entry(req: Request, request: SearchRequest, v: Version, mode: str) -> dict[str, Any]:
    assert v.content is not None
    content = shape(v.content, request.summary, request.elements)
    return {
        "fullUrl": full_url(req.base_url, v),
        "resource": orjson.Fragment(content),
        "search": {"mode": mode},
    }


def _bundle(req: Request, request: SearchRequest, page: Page, url: str) -> dict[str, Any]:
    # The links show the search as applied: without what lenient handling skipped.
    applied = [(k, v) for k, v in req.params if (k, v) not in request.ignored]
    kept = [(k, v) for k, v in applied if k != "_cursor"]
    links = [link("self", url, applied)]
    if page.previous_cursor is not None or page.next_cursor is not None or applied != kept:
        links.append(link("first", url, kept))
    if page.previous_cursor is not None:
        links.append(
            link("previous", url, [*kept, ("_cursor", encode_cursor(page.previous_cursor))])
        )
    if page.next_cursor is not None:
        links.append(link("next", url, [*kept, ("_cursor", encode_cursor(page.next_cursor))]))
    entries = [_entry(req, request, v, "match") for v in page.matches]
    entries += [_entry(req, request, v, "include") for v in page.included]
    if request.warnings:
        entries.append(
            {"resource": operation_outcome(request.warnings), "search": {"mode": "outcome"}}
        )
    return bundle("searchset", entries, links, page.total)


def _run(
    ctx: Context,
    req: Request,
    tx: Transaction | None,
    request: SearchRequest,
    url: str,
    compartment: Compartment | None = None,
) -> Result:
    engine = SearchEngine(ctx.registry, req.base_url)
    with ctx.reading(tx) as t, t.limited(ctx.settings.search_timeout_seconds, req.cancel):
        page = engine.run(
            t,
            request,
            _page_size(ctx, request),
            compartment,
            total_up_to=ctx.settings.search_total_limit,
        )
    return Result(200, body=_bundle(req, request, page, url))


def search(ctx: Context, req: Request, tx: Transaction | None = None) -> Result:
    """Type search, and system search when the request names no type."""
    if req.resource_type is None:
        return system_search(ctx, req, tx)
    request = _request(ctx, req, [req.resource_type])
    return _run(ctx, req, tx, request, f"{req.base_url}/{req.resource_type}")


def system_search(ctx: Context, req: Request, tx: Transaction | None = None) -> Result:
    named = [t.strip() for k, v in req.params if k == "_type" for t in v.split(",") if t.strip()]
    for t in named:
        if not is_resource_type(t):
            raise Invalid(f"_type names an unknown resource type '{t}'", expression=("_type",))
    types = sorted(set(named)) if named else sorted(R4_RESOURCE_TYPES)
    request = _request(ctx, req, types)
    return _run(ctx, req, tx, request, req.base_url)


def compartment_search(ctx: Context, req: Request, tx: Transaction | None = None) -> Result:
    """GET [compartment type]/[id]/[type]?… (or `*` for every type of the compartment)."""
    assert req.resource_type is not None and req.resource_id is not None
    compartment, owner, target = req.resource_type, req.resource_id, req.operation
    if compartment not in ctx.registry.compartments:
        raise NotFound(f"There is no {compartment} compartment")
    members = ctx.registry.compartments[compartment]
    types = sorted(t for t in members if ctx.registry.compartment(compartment, t)) + (
        [compartment] if compartment not in members else []
    )
    if target != "*":
        if target not in types:
            raise NotFound(f"{target} resources are not in the {compartment} compartment")
        types = [str(target)]
    request = _request(ctx, req, types)
    url = f"{req.base_url}/{compartment}/{owner}/{target}"
    return _run(ctx, req, tx, request, url, Compartment(compartment, owner))


def everything(ctx: Context, req: Request, tx: Transaction | None = None) -> Result:
    """Patient/[id]/$everything: the patient, its compartment and what those reference."""
    assert req.resource_type is not None and req.resource_id is not None
    if req.resource_type != "Patient":
        raise NotFound(f"$everything is defined on Patient, not {req.resource_type}")
    with ctx.reading(tx) as unit:
        patient = unit.current("Patient", req.resource_id)
    if patient is None or patient.deleted:
        raise NotFound(f"Patient/{req.resource_id} is not known")
    allowed = {"_count", "_cursor", "_format", "_pretty"}
    for name, _ in req.params:
        if name not in allowed:
            raise Invalid(
                f"$everything does not support the parameter '{name}'", expression=(name,)
            )
    members = ctx.registry.compartments["Patient"]
    types = sorted({"Patient", *(t for t in members if ctx.registry.compartment("Patient", t))})
    request = _request(ctx, req, types)
    request.includes.append(Include("*", None, None, False))
    url = f"{req.base_url}/Patient/{req.resource_id}/$everything"
    return _run(ctx, req, tx, request, url, Compartment("Patient", req.resource_id))
