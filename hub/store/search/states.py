"""The states of stored SearchParameters and the registry version, in SQL.

`hub.parameters.stored` decides what the states are; this module reads and writes
them: `search_param_state` (one row per stored parameter the registry takes)
and `search_registry` (one row whose version changes with them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from hub.store.repository import Transaction
from hub.store.schema import resources, search_param_state, search_registry

# What a store raises when it cannot be read at all (an unmigrated one lacks these tables).
StoreError = SQLAlchemyError
RESOURCE_TYPE = "SearchParameter"


@dataclass(frozen=True)
class StoredParameter:
    """A live SearchParameter of the store, with its recorded state (None: no row)."""

    resource_id: str
    version_id: int
    last_updated: datetime
    content: bytes
    state: str | None
    definition_hash: str | None


@dataclass(frozen=True)
class State:
    state: str
    definition_hash: str
    url: str


def read_version(tx: Transaction) -> int:
    found = tx.rows(select(search_registry.c.version).where(search_registry.c.id == 1))
    return int(found[0][0]) if found else 0


def bump(tx: Transaction) -> None:
    """Tell every process that the stored parameters or their states changed."""
    changed = tx.execute(
        update(search_registry)
        .where(search_registry.c.id == 1)
        .values(version=search_registry.c.version + 1)
    )
    if not changed:
        tx.execute(insert(search_registry).values(id=1, version=1))


def stored_parameters(tx: Transaction) -> list[StoredParameter]:
    """The live SearchParameters with their states, oldest first."""
    state = search_param_state
    rows = tx.rows(
        select(
            resources.c.res_id,
            resources.c.version_id,
            resources.c.last_updated,
            resources.c.content,
            state.c.state,
            state.c.definition_hash,
        )
        .select_from(resources.outerjoin(state, state.c.resource_id == resources.c.res_id))
        .where(resources.c.res_type == RESOURCE_TYPE, resources.c.deleted.is_(False))
        .order_by(resources.c.last_updated, resources.c.res_id)
    )
    return [StoredParameter(*row) for row in rows]


def stored_urls(tx: Transaction) -> dict[str, str | None]:
    """The stored SearchParameters: id -> url."""
    rows = tx.rows(
        select(resources.c.res_id, resources.c.content).where(
            resources.c.res_type == RESOURCE_TYPE, resources.c.deleted.is_(False)
        )
    )
    return {row.res_id: orjson.loads(row.content).get("url") for row in rows}


def state_of(tx: Transaction, resource_id: str) -> State | None:
    state = search_param_state
    found = tx.rows(
        select(state.c.state, state.c.definition_hash, state.c.url).where(
            state.c.resource_id == resource_id
        )
    )
    return State(*found[0]) if found else None


def insert_state(tx: Transaction, resource_id: str, values: Mapping[str, Any]) -> None:
    tx.execute(insert(search_param_state).values(resource_id=resource_id, **values))


def update_state(tx: Transaction, resource_id: str, values: Mapping[str, Any]) -> None:
    state = search_param_state
    tx.execute(update(state).where(state.c.resource_id == resource_id).values(**values))


def delete_state(tx: Transaction, resource_id: str) -> None:
    state = search_param_state
    tx.execute(delete(state).where(state.c.resource_id == resource_id))
