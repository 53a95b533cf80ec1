"""search (type level): https://hl7.org/fhir/R4/search.html

GET [type]?params and POST [type]/_search. Pages are cut on the resource id
(keyset: the `_page_after` cursor of the `next` link), so a page never
repeats or skips a row because of rows written before it.
"""

from __future__ import annotations

from dataclasses import replace

from hub.interactions.bundles import bundle, full_url, link, stored
from hub.interactions.context import Context, Request, Result
from hub.interactions.paging import page_size
from hub.search import build_query
from hub.store.repository import Transaction


def search(ctx: Context, req: Request, tx: Transaction | None = None) -> Result:
    assert req.resource_type is not None
    query = build_query(ctx.registry, req.resource_type, req.params)
    after = next((v for k, v in req.params if k == "_page_after"), None)
    count = page_size(ctx, req.params)
    only_total = ("_count", "0") in req.params  # R4: _count=0 means _summary=count
    with ctx.reading(tx) as t:
        rows = [] if only_total else t.search(replace(query, after_id=after, limit=count + 1))
        total = t.count(query)
    url = f"{req.base_url}/{req.resource_type}"
    keep = [(k, v) for k, v in req.params if k != "_page_after"]
    links = [link("self", url, req.params)]
    if len(rows) > count:
        rows = rows[:count]
        links.append(link("next", url, [*keep, ("_page_after", rows[-1].resource_id)]))
    entries = [
        {"fullUrl": full_url(req.base_url, v), "resource": stored(v), "search": {"mode": "match"}}
        for v in rows
    ]
    return Result(200, body=bundle("searchset", entries, links, total))
