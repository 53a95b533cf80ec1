"""Element-level lineage: which source field of which message produced which element.

Feed writes record it in the same transaction as the resource versions
(`hub.ingest.pipeline`); `$lineage` and `GET /messages/{id}` read it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Engine, Select, delete, func, select, tuple_

from hub.store.repository import Transaction
from hub.store.schema import lineage


def last_writers(
    tx: Transaction, keys: Sequence[tuple[str, str]], after: int
) -> dict[tuple[str, str], int]:
    """The last message after `after` that wrote each of these resources (replays)."""
    rows = tx.rows(
        select(lineage.c.res_type, lineage.c.res_id, func.max(lineage.c.message_id))
        .where(
            lineage.c.message_id > after,
            tuple_(lineage.c.res_type, lineage.c.res_id).in_(list(dict.fromkeys(keys))),
        )
        .group_by(lineage.c.res_type, lineage.c.res_id)
    )
    return {(r[0], r[1]): int(r[2]) for r in rows}


def written_by(
    tx: Transaction, resource_type: str, resource_id: str, message_id: int
) -> int | None:
    """The last version of a resource `message_id` wrote, if it wrote one."""
    rows = tx.rows(
        select(func.max(lineage.c.version_id)).where(
            lineage.c.res_type == resource_type,
            lineage.c.res_id == resource_id,
            lineage.c.message_id == message_id,
        )
    )
    version_id = rows[0][0] if rows else None
    return int(version_id) if version_id is not None else None


def forget(
    tx: Transaction, message_id: int, resource_type: str, resource_id: str, version_id: int
) -> None:
    """Drop a message's lineage of one version (a replay records it again)."""
    tx.execute(
        delete(lineage).where(
            lineage.c.message_id == message_id,
            lineage.c.res_type == resource_type,
            lineage.c.res_id == resource_id,
            lineage.c.version_id == version_id,
        )
    )


def record(tx: Transaction, rows: Sequence[Mapping[str, Any]]) -> None:
    """Lineage rows (res_type, res_id, version_id, element, source_field, message_id, mapping,
    mapping_version), sent with the transaction's new resources."""
    if rows:
        tx.add_rows(lineage, rows)


def _elements(resource_type: str, resource_id: str, version_id: int | None) -> Select[Any]:
    stmt = select(lineage).where(
        lineage.c.res_type == resource_type, lineage.c.res_id == resource_id
    )
    if version_id is not None:
        stmt = stmt.where(lineage.c.version_id == version_id)
    return stmt.order_by(lineage.c.version_id, lineage.c.element)


def _element(r: Any) -> dict[str, Any]:
    return {
        "version": r.version_id,
        "element": r.element,
        "source": r.source_field,
        "message": r.message_id,
        "mapping": r.mapping,
        "mappingVersion": r.mapping_version,
    }


def elements(
    tx: Transaction, resource_type: str, resource_id: str, version_id: int | None = None
) -> list[dict[str, Any]]:
    """A resource's lineage rows (of one version), read through `tx`: `$lineage`."""
    return [_element(r) for r in tx.rows(_elements(resource_type, resource_id, version_id))]


def of_resource(
    engine: Engine, resource_type: str, resource_id: str, version_id: int | None = None
) -> list[dict[str, Any]]:
    """The same, on a connection of its own (the message store's lineage view)."""
    with engine.connect() as conn:
        return [
            _element(r) for r in conn.execute(_elements(resource_type, resource_id, version_id))
        ]


def of_message(engine: Engine, message_id: int) -> list[dict[str, Any]]:
    stmt = (
        select(lineage)
        .where(lineage.c.message_id == message_id)
        .order_by(lineage.c.res_type, lineage.c.res_id, lineage.c.element)
    )
    with engine.connect() as conn:
        return [
            {
                "resource": f"{r.res_type}/{r.res_id}/_history/{r.version_id}",
                "element": r.element,
                "source": r.source_field,
                "mapping": r.mapping,
                "mappingVersion": r.mapping_version,
            }
            for r in conn.execute(stmt)
        ]
