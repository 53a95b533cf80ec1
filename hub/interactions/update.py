"""update: https://hl7.org/fhir/R4/http.html#update (and conditional update, #cond-update)"""

from __future__ import annotations

from hub.errors import Invalid
from hub.fhir import validate
from hub.interactions.context import Context, Request, Result
from hub.interactions.writes import expected_version, new_id, save, single_match
from hub.store.repository import Transaction


def update(ctx: Context, req: Request, tx: Transaction | None = None) -> Result:
    """PUT [type]/[id] creates or updates; PUT [type]?criteria resolves the id by search."""
    assert req.resource_type is not None
    resource = req.body
    validate(resource, expected_type=req.resource_type, max_depth=ctx.settings.max_resource_depth)
    body_id = resource.get("id")
    if_match = expected_version(req.if_match)
    with ctx.unit(tx) as t:
        if req.resource_id is None:
            match = single_match(ctx, t, req.resource_type, req.params, req.base_url)
            target = match.resource_id if match is not None else (body_id or new_id())
            if match is not None and body_id is not None and body_id != target:
                raise Invalid(
                    f"The resource's id '{body_id}' differs from the id '{target}' of the "
                    "resource matching the criteria",
                    expression=(f"{req.resource_type}.id",),
                )
        else:
            target = req.resource_id
            if body_id is None:
                raise Invalid(
                    "An update must carry the resource's id in the body",
                    expression=(f"{req.resource_type}.id",),
                )
            if body_id != target:
                raise Invalid(
                    f"The resource's id '{body_id}' differs from the id '{target}' in the URL",
                    expression=(f"{req.resource_type}.id",),
                )
        return save(ctx, t, req.resource_type, target, resource, method="PUT", if_match=if_match)
