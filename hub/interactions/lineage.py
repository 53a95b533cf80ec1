"""$lineage: which source field produced which element, for each version of a resource.

`GET [type]/[id]/$lineage` (optionally `?version=n`) answers a Parameters
resource: one `element` per (version, element) with the source field, the
message (by its id in the message store) that wrote it, and the mapping (name
and version) that turned the one into the other. An unknown resource or
version is 404; a version written other than by a feed has no elements. Feed writes record
lineage in the same transaction as the resource version.
"""

from __future__ import annotations

from typing import Any

from hub.errors import Invalid, NotFound
from hub.interactions.context import Context, Request, Result
from hub.store import lineage
from hub.store.repository import Transaction


def lineage_of(ctx: Context, req: Request, tx: Transaction | None = None) -> Result:
    assert req.resource_type is not None and req.resource_id is not None
    version: int | None = None
    for name, value in req.params:
        if name == "version":
            if not value.isdigit():
                raise Invalid("version must be a number", expression=("version",))
            version = int(value)
        elif name not in ("_format", "_pretty"):
            raise Invalid(f"$lineage does not take '{name}'", expression=(name,))
    with ctx.reading(tx) as t:
        if t.current(req.resource_type, req.resource_id) is None:
            raise NotFound(f"{req.resource_type}/{req.resource_id} is not known")
        if version is not None and t.version(req.resource_type, req.resource_id, version) is None:
            raise NotFound(
                f"{req.resource_type}/{req.resource_id}/_history/{version} is not known",
                expression=("version",),
            )
        rows = lineage.elements(t, req.resource_type, req.resource_id, version)
    parameters: list[dict[str, Any]] = [
        {
            "name": "element",
            "part": [
                {"name": "version", "valueInteger": row["version"]},
                {"name": "path", "valueString": row["element"]},
                {"name": "source", "valueString": row["source"]},
                {"name": "message", "valueString": str(row["message"])},
                # Rows written before mappings were versioned name none.
                *(
                    {"name": name, "valueString": row[key]}
                    for name, key in (("mapping", "mapping"), ("mappingVersion", "mappingVersion"))
                    if row[key] is not None
                ),
            ],
        }
        for row in rows
    ]
    return Result(200, body={"resourceType": "Parameters", "parameter": parameters})
