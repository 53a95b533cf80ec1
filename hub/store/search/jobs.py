"""Reindex jobs in SQL: their rows in `reindex_jobs`, and the batches of resources they
re-extract (`hub.parameters.reindex` runs them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update

from hub.store.repository import Transaction
from hub.store.schema import reindex_jobs, resources


@dataclass(frozen=True)
class JobRow:
    id: str
    status: str
    resource_types: str  # space-separated
    total: int
    done: int
    started: datetime
    finished: datetime | None
    error: str | None


def insert_job(tx: Transaction, **values: Any) -> None:
    tx.execute(insert(reindex_jobs).values(**values))


def read_job(tx: Transaction, job_id: str) -> JobRow | None:
    j = reindex_jobs
    found = tx.rows(
        select(
            j.c.id, j.c.status, j.c.resource_types, j.c.total, j.c.done, j.c.started,
            j.c.finished, j.c.error,
        ).where(j.c.id == job_id)
    )  # fmt: skip
    return JobRow(*found[0]) if found else None


def update_job(tx: Transaction, job_id: str, **values: Any) -> None:
    tx.execute(update(reindex_jobs).where(reindex_jobs.c.id == job_id).values(**values))


def count_live(tx: Transaction, types: Sequence[str]) -> int:
    """The live resources of these types."""
    return int(
        tx.rows(
            select(func.count())
            .select_from(resources)
            .where(resources.c.res_type.in_(types), resources.c.deleted.is_(False))
        )[0][0]
    )


def lock_batch(
    tx: Transaction, resource_type: str, after: str, limit: int, since: datetime | None
) -> list[tuple[str, bytes]]:
    """(id, content) of the next `limit` live resources of a type by id after `after` (changed
    since `since`, when given), locked: a writer of one of these waits until the
    transaction ends."""
    stmt = (
        select(resources.c.res_id, resources.c.content)
        .where(
            resources.c.res_type == resource_type,
            resources.c.deleted.is_(False),
            resources.c.res_id > after,
        )
        .order_by(resources.c.res_id)
        .limit(limit)
    )
    if since is not None:
        stmt = stmt.where(resources.c.last_updated >= since)
    return [(row.res_id, row.content) for row in tx.lock_row(stmt)]
