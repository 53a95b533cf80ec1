"""create: https://hl7.org/fhir/R4/http.html#create (and conditional create, #ccreate)"""

from __future__ import annotations

from urllib.parse import parse_qsl

from hub.fhir import validate
from hub.interactions.context import Context, Request, Result
from hub.interactions.executor import execute
from hub.interactions.plan import ConditionalCreate, Create, Plan, Write
from hub.store.repository import Transaction


def create(ctx: Context, req: Request, tx: Transaction | None = None) -> Result:
    """POST [type]. The server assigns the id: one in the body is ignored, as the spec says."""
    write = planned(ctx, req)
    with ctx.unit(tx) as t:
        return execute(ctx, t, Plan.of(write, base_url=req.base_url))[0]


def planned(ctx: Context, req: Request) -> Write:
    """The write of a create request. A transaction Bundle passes the id it assigned up front
    in `req.resource_id`, so that references to the entry's fullUrl could be rewritten first."""
    assert req.resource_type is not None
    resource = req.body
    validate(resource, expected_type=req.resource_type, max_depth=ctx.settings.max_resource_depth)
    if req.if_none_exist:
        # Two concurrent conditional creates with the same criteria must not both create.
        criteria = tuple(parse_qsl(req.if_none_exist, keep_blank_values=True))
        return ConditionalCreate(req.resource_type, criteria, resource, req.resource_id)
    return Create(req.resource_type, resource, req.resource_id)
