"""read: https://hl7.org/fhir/R4/http.html#read"""

from __future__ import annotations

from hub.errors import Gone, NotFound
from hub.interactions.context import Context, Request, Result, etag
from hub.store.repository import Transaction, Version


def read(ctx: Context, req: Request, tx: Transaction | None = None) -> Result:
    assert req.resource_type is not None and req.resource_id is not None
    if tx is not None:
        version = tx.current(req.resource_type, req.resource_id)
    else:
        version = ctx.repo.read(req.resource_type, req.resource_id)
    return answer(req, version)


async def read_async(ctx: Context, req: Request) -> Result:
    """The same read, awaited on the event loop through `ctx.reader`."""
    assert req.resource_type is not None and req.resource_id is not None
    assert ctx.reader is not None
    return answer(req, await ctx.reader.read(req.resource_type, req.resource_id))


def answer(req: Request, version: Version | None) -> Result:
    if version is None:
        raise NotFound(f"{req.resource_type}/{req.resource_id} is not known")
    if version.deleted:
        raise Gone(
            f"{req.resource_type}/{req.resource_id} was deleted", headers={"ETag": etag(version)}
        )
    if req.if_none_match is not None and req.if_none_match.strip() == etag(version):
        return Result(304, headers={"ETag": etag(version)})
    if (
        req.if_modified_since is not None
        and version.last_updated.replace(microsecond=0) <= req.if_modified_since
    ):
        return Result(304, headers={"ETag": etag(version)})
    return Result(200, version=version)
