"""history (instance, type, system): https://hl7.org/fhir/R4/http.html#history

Newest first. Pages are cut on the store's global version sequence (the
`_page_before` cursor of the `next` link), so versions written while a
client pages never shift, repeat or skip entries.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hub.errors import Invalid
from hub.interactions.bundles import bundle, full_url, link, stored, version_response
from hub.interactions.context import Context, Request, Result
from hub.interactions.paging import page_size, parse_instant
from hub.store.repository import Transaction, Version

_ACCEPTED = {"_since", "_count", "_page_before", "_format", "_pretty"}


def _entry(base_url: str, v: Version) -> dict[str, Any]:
    # The interaction that made the version, as the store recorded it.
    url = v.resource_type if v.method == "POST" else f"{v.resource_type}/{v.resource_id}"
    request = {"method": v.method, "url": url}
    if v.deleted:
        status = 204
    elif v.version_id == 1 or v.method == "POST":
        status = 201
    else:
        status = 200
    entry: dict[str, Any] = {"fullUrl": full_url(base_url, v)}
    if not v.deleted:
        entry["resource"] = stored(v)
    entry["request"] = request
    entry["response"] = version_response(v, status)
    return entry


def history(ctx: Context, req: Request, tx: Transaction | None = None) -> Result:
    since: datetime | None = None
    before: int | None = None
    for name, value in req.params:
        if name not in _ACCEPTED:
            raise Invalid(f"History does not support the parameter '{name}'", expression=(name,))
        if name == "_since":
            since = parse_instant(name, value)
        elif name == "_page_before":
            if not value.isdigit():
                raise Invalid("_page_before must be a number", expression=(name,))
            before = int(value)
    count = page_size(ctx, req.params)
    with ctx.reading(tx) as t:
        rows = t.history(req.resource_type, req.resource_id, since, before, count + 1)
        total = t.history_count(req.resource_type, req.resource_id, since)
    url = "/".join(p for p in (req.base_url, req.resource_type, req.resource_id) if p) + "/_history"
    keep = [(k, v) for k, v in req.params if k != "_page_before"]
    links = [link("self", url, req.params)]
    if len(rows) > count:
        rows = rows[:count]
        links.append(link("next", url, [*keep, ("_page_before", str(rows[-1].seq))]))
    entries = [_entry(req.base_url, v) for v in rows]
    return Result(200, body=bundle("history", entries, links, total))
