"""delete: https://hl7.org/fhir/R4/http.html#delete (and conditional delete, #3.1.0.7.1)

Deleting creates a deletion version: history keeps every earlier version and
a later read answers 410 Gone. Deleting what does not exist (or no longer
does) succeeds with nothing to do, as the spec allows.
"""

from __future__ import annotations

from hub.interactions.context import Context, Request, Result
from hub.interactions.writes import expected_version, remove, single_match
from hub.store.repository import Transaction


def delete(ctx: Context, req: Request, tx: Transaction | None = None) -> Result:
    assert req.resource_type is not None
    if_match = expected_version(req.if_match)
    with ctx.unit(tx) as t:
        if req.resource_id is None:
            # Several matches answer 412: deleting many at once is refused, not guessed at.
            match = single_match(ctx, t, req.resource_type, req.params, req.base_url)
            if match is None:
                return Result(204)
            target = match.resource_id
        else:
            target = req.resource_id
        return remove(t, req.resource_type, target, if_match=if_match)
