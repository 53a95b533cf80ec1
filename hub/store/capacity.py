"""Whether PostgreSQL can hold the connections `hub serve` opens.

Each worker process keeps up to HUB_DB_POOL_SIZE pooled connections and
HUB_DB_READ_CONNECTIONS for reads by id. PostgreSQL refuses connections beyond
`max_connections`, less `superuser_reserved_connections` (and, from version 16,
`reserved_connections`); a hub that runs into that limit fails requests at
random under load, so `hub serve` checks at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from hub.store.reader import conninfo


class TooFewConnections(Exception):
    """The hub's connections cannot fit in the server's, even with no other client."""


class Unreachable(Exception):
    """The server could not be asked (not up yet, refused us): its limits are unknown."""


@dataclass(frozen=True)
class Capacity:
    """The connection slots of a PostgreSQL server, and how many are taken now."""

    max_connections: int
    reserved: int  # kept for superusers (and pg_use_reserved_connections)
    in_use: int  # client connections open now, the one asking excluded

    @property
    def usable(self) -> int:
        return self.max_connections - self.reserved

    @property
    def free(self) -> int:
        return self.usable - self.in_use


def needed(workers: int, pool_size: int, read_connections: int) -> int:
    """Connections `hub serve` may open: workers x (pool + read connections)."""
    return workers * (pool_size + read_connections)


def server_capacity(database_url: str) -> Capacity:
    """The server's connection slots; raises `Unreachable` when it cannot be asked."""
    try:
        with psycopg.connect(conninfo(database_url), connect_timeout=5, autocommit=True) as conn:
            row = conn.execute(
                "SELECT current_setting('max_connections')::int,"
                " current_setting('superuser_reserved_connections')::int"
                " + coalesce(current_setting('reserved_connections', true)::int, 0),"
                " (SELECT count(*) FROM pg_stat_activity"
                "   WHERE backend_type = 'client backend' AND pid <> pg_backend_pid())::int"
            ).fetchone()
    except psycopg.Error as e:
        raise Unreachable(str(e)) from e
    assert row is not None
    return Capacity(int(row[0]), int(row[1]), int(row[2]))


def judge(capacity: Capacity, workers: int, pool_size: int, read_connections: int) -> str | None:
    """None when the hub's connections fit beside those open now; a warning when they fit
    only once some of those close. Raises TooFewConnections when they can never fit."""
    need = needed(workers, pool_size, read_connections)
    formula = (
        f"{workers} worker(s) x (HUB_DB_POOL_SIZE {pool_size} + HUB_DB_READ_CONNECTIONS "
        f"{read_connections}) = {need} connections"
    )
    if need > capacity.usable:
        raise TooFewConnections(
            f"{formula}, but the PostgreSQL server allows {capacity.usable} "
            f"(max_connections {capacity.max_connections} less {capacity.reserved} reserved). "
            "Lower HUB_DB_POOL_SIZE or HUB_WORKERS (--workers), or raise max_connections."
        )
    if need > capacity.free:
        return (
            f"{formula}, but only {capacity.free} of the server's {capacity.usable} are free "
            f"now ({capacity.in_use} open by other clients): requests may fail under load. "
            "Lower HUB_DB_POOL_SIZE or HUB_WORKERS, or raise max_connections."
        )
    return None
