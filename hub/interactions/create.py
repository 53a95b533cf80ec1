"""create: https://hl7.org/fhir/R4/http.html#create (and conditional create, #ccreate)"""

from __future__ import annotations

from hub.fhir import validate
from hub.interactions.context import Context, Request, Result
from hub.interactions.writes import create_match, new_id, save
from hub.store.repository import Transaction


def create(ctx: Context, req: Request, tx: Transaction | None = None) -> Result:
    """POST [type]. The server assigns the id: one in the body is ignored, as the spec says.

    A transaction Bundle passes the id it assigned up front in `req.resource_id`,
    so that references to the entry's fullUrl could be rewritten beforehand.
    """
    assert req.resource_type is not None
    resource = req.body
    validate(resource, expected_type=req.resource_type, max_depth=ctx.settings.max_resource_depth)
    with ctx.unit(tx) as t:
        if req.if_none_exist:
            # Two concurrent conditional creates with the same criteria must not both create.
            existing = create_match(ctx, t, req.resource_type, req.if_none_exist, req.base_url)
            if existing is not None:
                return Result(200, version=existing)
        # A transaction assigned the id up front (a new uuid, like new_id here).
        resource_id = req.resource_id if req.resource_id is not None else new_id()
        return save(ctx, t, req.resource_type, resource_id, resource, method="POST", fresh=True)
