"""vread: https://hl7.org/fhir/R4/http.html#vread"""

from __future__ import annotations

from hub.errors import Gone, NotFound
from hub.interactions.context import Context, Request, Result, etag
from hub.store.repository import Transaction


def vread(ctx: Context, req: Request, tx: Transaction | None = None) -> Result:
    assert req.resource_type is not None and req.resource_id is not None
    name = f"{req.resource_type}/{req.resource_id}/_history/{req.version_id}"
    if req.version_id is None or not req.version_id.isdigit():
        raise NotFound(f"{name} is not known: a version id is a number")
    with ctx.reading(tx) as t:
        version = t.version(req.resource_type, req.resource_id, int(req.version_id))
    if version is None:
        raise NotFound(f"{name} is not known")
    if version.deleted:
        raise Gone(f"{name} is a deletion", headers={"ETag": etag(version)})
    return Result(200, version=version)
