"""patch: https://hl7.org/fhir/R4/http.html#patch (JSON Patch, RFC 6902)"""

from __future__ import annotations

from typing import Any

import jsonpatch

from hub.errors import BusinessRule, Invalid, Issue
from hub.fhir.content import nesting
from hub.interactions.context import Context, Request, Result
from hub.interactions.executor import execute
from hub.interactions.plan import Patch, Plan, Write
from hub.interactions.writes import expected_version
from hub.store.repository import Transaction


def _patch_document(body: Any) -> jsonpatch.JsonPatch:
    if not isinstance(body, list):
        raise Invalid("A JSON Patch document is a JSON array of operations")
    try:
        return jsonpatch.JsonPatch(body)
    except (jsonpatch.InvalidJsonPatch, TypeError, KeyError) as e:
        raise Invalid(f"Invalid JSON Patch document: {e}") from None


def patch(ctx: Context, req: Request, tx: Transaction | None = None) -> Result:
    write = planned(ctx, req)
    with ctx.unit(tx) as t:
        return execute(ctx, t, Plan.of(write, base_url=req.base_url))[0]


def planned(ctx: Context, req: Request) -> Write:
    """The write of a patch request; the patch is applied to the current version by the
    executor, which validates the result."""
    assert req.resource_type is not None
    _patch_document(req.body)
    max_depth = ctx.settings.max_resource_depth
    # Each operation is one object: a value nesting deeper than a resource may would make the
    # result invalid (422, as validation would say), and is refused before jsonpatch copies it.
    if nesting(req.body, max_depth + 1) > max_depth + 1:
        message = (
            f"The JSON Patch holds a value nested more than {max_depth} elements deep, "
            "deeper than a resource may be"
        )
        raise BusinessRule(message, issues=[Issue("too-costly", message)])
    if_match = expected_version(req.if_match)
    operations = tuple(req.body)
    if req.resource_id is None:
        return Patch(req.resource_type, None, operations, if_match, tuple(req.params))
    return Patch(req.resource_type, req.resource_id, operations, if_match)
