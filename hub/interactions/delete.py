"""delete: https://hl7.org/fhir/R4/http.html#delete (and conditional delete, #3.1.0.7.1)

Deleting creates a deletion version: history keeps every earlier version and
a later read answers 410 Gone. Deleting what does not exist (or no longer
does) succeeds with nothing to do, as the spec allows. Deleting what other
resources still reference is refused (409; docs/api.md).
"""

from __future__ import annotations

from hub.interactions.context import Context, Request, Result
from hub.interactions.executor import execute
from hub.interactions.plan import ConditionalDelete, Delete, Plan, Write
from hub.interactions.writes import expected_version
from hub.store.repository import Transaction


def delete(ctx: Context, req: Request, tx: Transaction | None = None) -> Result:
    write = planned(ctx, req)
    with ctx.unit(tx) as t:
        return execute(ctx, t, Plan.of(write, base_url=req.base_url))[0]


def planned(ctx: Context, req: Request) -> Write:
    assert req.resource_type is not None
    if_match = expected_version(req.if_match)
    if req.resource_id is None:
        return ConditionalDelete(req.resource_type, tuple(req.params), if_match)
    return Delete(req.resource_type, req.resource_id, if_match)
