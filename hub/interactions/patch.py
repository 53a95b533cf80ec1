"""patch: https://hl7.org/fhir/R4/http.html#patch (JSON Patch, RFC 6902)"""

from __future__ import annotations

from typing import Any

import jsonpatch
import jsonpointer
import orjson

from hub.errors import BusinessRule, Gone, Invalid, Issue, NotFound
from hub.fhir import validate
from hub.fhir.content import nesting
from hub.fhir.deep import call_at_depth
from hub.interactions.context import Context, Request, Result
from hub.interactions.writes import check_precondition, expected_version, save, single_match
from hub.store.repository import Transaction


def _patch_document(body: Any) -> jsonpatch.JsonPatch:
    if not isinstance(body, list):
        raise Invalid("A JSON Patch document is a JSON array of operations")
    try:
        return jsonpatch.JsonPatch(body)
    except (jsonpatch.InvalidJsonPatch, TypeError, KeyError) as e:
        raise Invalid(f"Invalid JSON Patch document: {e}") from None


def patch(ctx: Context, req: Request, tx: Transaction | None = None) -> Result:
    assert req.resource_type is not None
    document = _patch_document(req.body)
    max_depth = ctx.settings.max_resource_depth
    # Each operation is one object: a value nesting deeper than a resource may would make the
    # result invalid (422, as validation would say), and is refused before jsonpatch copies it.
    depth = nesting(req.body, max_depth + 1)
    if depth > max_depth + 1:
        message = (
            f"The JSON Patch holds a value nested more than {max_depth} elements deep, "
            "deeper than a resource may be"
        )
        raise BusinessRule(message, issues=[Issue("too-costly", message)])
    if_match = expected_version(req.if_match)
    with ctx.unit(tx) as t:
        if req.resource_id is None:
            match = single_match(ctx, t, req.resource_type, req.params, req.base_url)
            if match is None:
                raise NotFound(f"No {req.resource_type} matches the criteria")
            target = match.resource_id
        else:
            target = req.resource_id
        current = t.current(req.resource_type, target)
        if current is None:
            raise NotFound(f"{req.resource_type}/{target} is not known")
        if current.deleted:
            raise Gone(f"{req.resource_type}/{target} was deleted")
        check_precondition(current, if_match)
        assert current.content is not None
        stored = orjson.loads(current.content)
        try:
            # jsonpatch copies the resource and the values recursively, as deep as they nest
            # (the stored resource may predate a lower limit; orjson reads 1024 levels at most).
            depth = max(depth, nesting(stored, 1024))
            patched = call_at_depth(depth, lambda: document.apply(stored))
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
            raise BusinessRule(f"The patch cannot be applied: {e}") from None
        if not isinstance(patched, dict):
            raise BusinessRule("The patch does not leave a resource")
        if patched.get("resourceType") != req.resource_type or patched.get("id") != target:
            raise BusinessRule("A patch may not change the resource's type or id")
        try:
            validate(patched, max_depth=max_depth)
        except Invalid as e:
            raise BusinessRule(
                f"The patched resource is not valid: {e.message}", issues=e.issues
            ) from None
        return save(ctx, t, req.resource_type, target, patched, method="PATCH", if_match=if_match)
