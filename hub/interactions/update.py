"""update: https://hl7.org/fhir/R4/http.html#update (and conditional update, #cond-update)"""

from __future__ import annotations

from hub.errors import Invalid
from hub.fhir import validate
from hub.interactions.context import Context, Request, Result
from hub.interactions.executor import execute
from hub.interactions.plan import ConditionalUpdate, Plan, Update, Write
from hub.interactions.writes import expected_version
from hub.store.repository import Transaction


def update(ctx: Context, req: Request, tx: Transaction | None = None) -> Result:
    """PUT [type]/[id] creates or updates; PUT [type]?criteria resolves the id by search."""
    write = planned(ctx, req)
    with ctx.unit(tx) as t:
        return execute(ctx, t, Plan.of(write, base_url=req.base_url))[0]


def planned(ctx: Context, req: Request) -> Write:
    assert req.resource_type is not None
    resource = req.body
    validate(resource, expected_type=req.resource_type, max_depth=ctx.settings.max_resource_depth)
    if_match = expected_version(req.if_match)
    if req.resource_id is None:
        return ConditionalUpdate(req.resource_type, tuple(req.params), resource, if_match)
    body_id = resource.get("id")
    if body_id is None:
        raise Invalid(
            "An update must carry the resource's id in the body",
            expression=(f"{req.resource_type}.id",),
        )
    if body_id != req.resource_id:
        raise Invalid(
            f"The resource's id '{body_id}' differs from the id '{req.resource_id}' in the URL",
            expression=(f"{req.resource_type}.id",),
        )
    return Update(req.resource_type, req.resource_id, resource, if_match)
