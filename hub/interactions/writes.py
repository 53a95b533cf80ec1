"""Writing one version: stamp, hash, compare, store.

The primitive under `hub.interactions.executor`, which every write path goes
through (REST, Bundles, feeds): If-Match is checked against the current
versionId (412), an update whose content is unchanged creates no version,
and a lost race surfaces as 409 (412 when the writer named a version). The
rules about whole writes (conditions, references) are the executor's.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson

from hub.errors import Conflict, Invalid, PreconditionFailed
from hub.fhir.jsonbytes import dumps
from hub.fhir.references import Found, held, local_references
from hub.interactions.context import Context, Result, parse_etag
from hub.parameters import stored
from hub.search.extract import extract
from hub.store.repository import NewVersion, Transaction, Version


def now() -> datetime:
    # Milliseconds: what meta.lastUpdated shows is exactly what the store keeps.
    t = datetime.now(UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def instant(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id() -> str:
    return str(uuid.uuid4())


def content_hash(resource: dict[str, Any]) -> str:
    """Hash of the content that matters: the server-managed meta fields are left out."""
    meta = resource.get("meta")
    if isinstance(meta, dict) and ("versionId" in meta or "lastUpdated" in meta):
        rest = {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}
        resource = (
            {**resource, "meta": rest}
            if rest
            else {k: v for k, v in resource.items() if k != "meta"}
        )
    return hashlib.sha256(dumps(resource, option=orjson.OPT_SORT_KEYS)).hexdigest()


def stamp(
    resource: dict[str, Any], resource_id: str, version_id: int, at: datetime
) -> dict[str, Any]:
    """The resource as stored: server-set id, meta.versionId and meta.lastUpdated first."""
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version_id)
    meta["lastUpdated"] = instant(at)
    body = {"resourceType": resource["resourceType"], "id": resource_id, "meta": meta}
    body.update((k, v) for k, v in resource.items() if k not in body)
    return body


def expected_version(if_match: str | None) -> int | None:
    if if_match is None:
        return None
    version = parse_etag(if_match)
    if version is None:
        raise Invalid(f"If-Match '{if_match}' is not a version ETag such as W/\"3\"")
    return version


def check_precondition(current: Version | None, wanted: int | None) -> None:
    if wanted is None:
        return
    if current is None or current.deleted:
        raise PreconditionFailed(
            f"If-Match names version {wanted}, but the resource does not exist"
        )
    if current.version_id != wanted:
        raise PreconditionFailed(
            f"If-Match names version {wanted}, but the current version is {current.version_id}"
        )


def save(
    ctx: Context,
    tx: Transaction,
    resource_type: str,
    resource_id: str,
    resource: dict[str, Any],
    *,
    method: str,
    if_match: int | None = None,
    fresh: bool = False,
    base_url: str = "",
    found: list[Found] | None = None,
    references: Sequence[Found] | None = None,
) -> Result:
    """Store `resource` as the next version; `fresh`: the id was just made by the server.

    A fresh id cannot exist yet, so its current version is not looked up (a
    collision would still fail the insert on the primary key). `resource` is not
    changed: what is stored is a copy. The local references of what is stored are
    added to `found` (`base_url` makes `[base]/Type/id` local), and the resources they
    hold against deletion recorded with it: none when the content is unchanged, as
    nothing is written. `references`: those of `resource`, when the caller walked them
    already (what is stored differs only in its id and meta's versionId and lastUpdated).
    """
    current = None if fresh else tx.current(resource_type, resource_id)
    check_precondition(current, if_match)
    # Hash what is stored: the id is the resource's, not whatever (if any) the body carried.
    digest = content_hash({**resource, "id": resource_id})
    if current is not None and not current.deleted and current.content_hash == digest:
        return Result(200, version=current)
    version_id = current.version_id + 1 if current is not None else 1
    at = now()
    stamped = stamp(resource, resource_id, version_id, at)
    content = dumps(stamped)
    if references is None:
        # Most resources of some types hold no reference: the bytes say so faster than a walk.
        references = local_references(stamped, base_url) if b'"reference"' in content else []
    if found is not None:
        found.extend(references)
    new = NewVersion(
        resource_type,
        resource_id,
        version_id,
        at,
        method,
        content,
        digest,
        extract(ctx.index_registry, stamped),
        tuple(held(references)),
    )
    _write(tx, new, current, if_match)
    created = current is None or current.deleted
    if resource_type == stored.RESOURCE_TYPE:  # search parameters are data: track their state
        stored.track(tx, ctx.registries.shipped, stamped, version_id, created=created)
        ctx.registries.watch()
    version = Version(resource_type, resource_id, version_id, at, False, content, digest, method)
    return Result(201 if created else 200, version=version, location=created)


def remove(
    tx: Transaction, resource_type: str, resource_id: str, *, if_match: int | None = None
) -> Result:
    current = tx.current(resource_type, resource_id)
    check_precondition(current, if_match)
    if current is None or current.deleted:
        return Result(204)
    at = now()
    new = NewVersion(resource_type, resource_id, current.version_id + 1, at, "DELETE", None, None)
    _write(tx, new, current, if_match)
    if resource_type == stored.RESOURCE_TYPE:
        stored.untrack(tx, resource_id)
    return Result(204, headers={"ETag": f'W/"{new.version_id}"'})


def _write(tx: Transaction, new: NewVersion, current: Version | None, if_match: int | None) -> None:
    try:
        tx.write(new, current.version_id if current is not None else None)
    except Conflict as e:
        if if_match is not None:
            raise PreconditionFailed(
                f"If-Match names version {if_match}, but another request changed the resource first"
            ) from e
        raise


def create_lock_name(resource_type: str, if_none_exist: str) -> str:
    """The name that conditional creates with the same criteria share, however spelled:
    decoded and in order (`identifier=a%7Cb&_id=1` and `_id=1&identifier=a|b` are one)."""
    return lock_name(resource_type, parse_qsl(if_none_exist, keep_blank_values=True))


def lock_name(resource_type: str, criteria: Sequence[tuple[str, str]]) -> str:
    """`create_lock_name` of criteria already decoded."""
    return f"create:{resource_type}?{urlencode(sorted(criteria))}"
