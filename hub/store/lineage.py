"""Reading element-level lineage: which source field of which message wrote an element."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from hub.store.repository import Transaction
from hub.store.schema import lineage


@dataclass(frozen=True, slots=True)
class LineageRow:
    version_id: int
    element: str
    source_field: str
    message_id: int


def lineage_of(
    tx: Transaction, resource_type: str, resource_id: str, version: int | None = None
) -> list[LineageRow]:
    """The lineage of a resource's versions (of one, with `version`), by version and element."""
    stmt = select(
        lineage.c.version_id, lineage.c.element, lineage.c.source_field, lineage.c.message_id
    ).where(lineage.c.res_type == resource_type, lineage.c.res_id == resource_id)
    if version is not None:
        stmt = stmt.where(lineage.c.version_id == version)
    rows = tx.rows(stmt.order_by(lineage.c.version_id, lineage.c.element))
    return [LineageRow(int(r[0]), str(r[1]), str(r[2]), int(r[3])) for r in rows]
