"""The SQLAlchemy implementation of the repository, for PostgreSQL and SQLite.

Concurrency rests on a compare-and-set of `resources.version_id`: a write
updates the current row only where it still holds the version the writer
read, so of two writers holding the same version exactly one changes the row
and the other sees no row changed and reports a conflict. `resource_history`'s
unique (type, id, version) is the second guard: version numbers never repeat.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

import psycopg
from sqlalchemy import (
    Connection,
    Engine,
    Executable,
    Table,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import QueuePool
from sqlalchemy.sql.elements import ColumnElement

from hub.errors import Busy, Conflict, Timeout, TooCostly
from hub.store.cancel import Cancellation
from hub.store.repository import IndexRows, NewVersion, Version
from hub.store.schema import (
    INDEX_TABLES,
    lineage,
    outbound_reference,
    resource_history,
    resources,
)

_CURRENT_COLUMNS = (
    resources.c.res_type,
    resources.c.res_id,
    resources.c.version_id,
    resources.c.last_updated,
    resources.c.deleted,
    resources.c.content,
    resources.c.content_hash,
)
_HISTORY_COLUMNS = (
    resource_history.c.res_type,
    resource_history.c.res_id,
    resource_history.c.version_id,
    resource_history.c.last_updated,
    resource_history.c.deleted,
    resource_history.c.content,
    resource_history.c.content_hash,
    resource_history.c.method,
    resource_history.c.seq,
)


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything the hub stores is UTC. psycopg hands
    # back the session time zone (e.g. ZoneInfo('Etc/UTC')), which is not `UTC` itself.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def version_of(row: Any) -> Version:
    return Version(
        resource_type=row[0],
        resource_id=row[1],
        version_id=row[2],
        last_updated=_utc(row[3]),
        deleted=bool(row[4]),
        content=row[5],
        content_hash=row[6],
        method=row[7] if len(row) > 7 else "PUT",
        seq=row[8] if len(row) > 8 else None,
    )


def make_engine(url: str, pool_size: int = 20, pool_timeout: float = 5.0) -> Engine:
    if url.startswith("sqlite"):
        memory = url in ("sqlite://", "sqlite:///:memory:") or "mode=memory" in url
        # A file's pool is sized and bounded as PostgreSQL's is (an in-memory database keeps
        # its one connection): SQLAlchemy's default of 5 + 10 for 30 s would leave request
        # threads beyond 15 waiting longer than the pool timeout says.
        pool: dict[str, Any] = (
            {}
            if memory
            else {"pool_size": pool_size, "max_overflow": 0, "pool_timeout": pool_timeout}
        )
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **pool
        )
        _configure_sqlite(engine)
        return engine
    # A pool as large as the request thread pool (see hub.api.app), with no overflow:
    # overflow connections are closed on check-in and reopened, a backend fork each.
    # Stale connections are recycled instead of pinged before every use. A request that
    # gets no connection within `pool_timeout` is answered 503 (`SqlRepository.connect`)
    # rather than queued without end.
    # No server-side prepared statements (psycopg prepares a query after 5 runs): PostgreSQL
    # then switches to a generic plan, blind to the values, and a search whose best plan
    # depends on them (a common code or a rare one) ran 15x slower (docs/benchmarks.md).
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=pool_timeout,
        pool_recycle=1800,
        connect_args={"prepare_threshold": None},
    )


def _configure_sqlite(engine: Engine) -> None:
    """WAL for concurrent readers, and BEGIN IMMEDIATE for writers.

    A deferred transaction that reads and then writes can fail with
    'database is locked' when another writer went first; taking the write
    lock at BEGIN makes writers queue instead (up to the busy timeout).
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let SQLAlchemy's BEGIN below rule
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = "IMMEDIATE" if conn.get_execution_options().get("hub_write") else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")


def _row_values(new: NewVersion) -> dict[str, Any]:
    return {
        "version_id": new.version_id,
        "last_updated": new.last_updated,
        "deleted": new.deleted,
        "content_hash": new.content_hash,
        "content": new.content,
    }


def _as_version(new: NewVersion) -> Version:
    return Version(
        new.resource_type,
        new.resource_id,
        new.version_id,
        new.last_updated,
        new.deleted,
        new.content,
        new.content_hash,
        new.method,
    )


def _reference_rows(new: NewVersion) -> list[dict[str, Any]]:
    return [
        {
            "res_type": new.resource_type,
            "res_id": new.resource_id,
            "target_type": target_type,
            "target_id": target_id,
        }
        for target_type, target_id in new.references
    ]


# Pairs of (type, id) asked of SQLite in one query: 2 variables each, within its oldest limit.
_SQLITE_PAIRS = 400


def _ids_by_type(keys: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    by_type: dict[str, list[str]] = {}
    for resource_type, resource_id in dict.fromkeys(keys):
        by_type.setdefault(resource_type, []).append(resource_id)
    return by_type


def _current_row(new: NewVersion) -> dict[str, Any]:
    return {**_row_values(new), "res_type": new.resource_type, "res_id": new.resource_id}


def _history_row(new: NewVersion) -> dict[str, Any]:
    return {**_current_row(new), "method": new.method}


_TABLES = {
    t.name: t
    for t in (resources, resource_history, *INDEX_TABLES.values(), outbound_reference, lineage)
}
# Every column but the generated history `seq`: what a new row of each table carries.
_COLUMNS = {
    name: tuple(c.name for c in table.columns if c.name != "seq") for name, table in _TABLES.items()
}
# The same columns, read from a row (a dict) as a tuple in one call.
_GETTERS = {name: itemgetter(*columns) for name, columns in _COLUMNS.items()}


def _values(name: str, rows: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    """A table's rows as value tuples in `_COLUMNS` order (None for a column a row lacks)."""
    try:
        return [_GETTERS[name](r) for r in rows]  # every column given: the common case
    except KeyError:
        columns = _COLUMNS[name]
        return [tuple(map(r.get, columns)) for r in rows]


# From this many rows a table's new rows go by COPY (see `insert_rows`).
COPY_FROM = 200


def insert_rows(
    driver: psycopg.Connection[Any],
    rows: Mapping[str, tuple[Sequence[str], Sequence[Any]]],
    then: tuple[str, Sequence[Any]] | None = None,
) -> list[Any]:
    """Insert rows of several tables (name -> (columns, value tuples)) straight through psycopg.

    A table of many rows (a batch of feed messages) goes by COPY, a round trip but a fraction
    of executemany's time a row; the others in one pipeline, one round trip for all (libpq
    before 14 has no pipeline mode: then one a table). No SQLAlchemy statement is built: that
    was a third of a create's time. `then`: a query (SQL, parameters) sent in the same
    pipeline, after the inserts; its rows are returned.
    """
    with driver.cursor() as cursor, driver.cursor() as asked:
        for name, (columns, values) in rows.items():
            if len(values) >= COPY_FROM:
                with cursor.copy(f"COPY {name} ({', '.join(columns)}) FROM STDIN") as copy:
                    for value in values:
                        copy.write_row(value)
        pipeline = driver.pipeline() if psycopg.Pipeline.is_supported() else nullcontext()
        with pipeline:
            for name, (columns, values) in rows.items():
                if 0 < len(values) < COPY_FROM:
                    marks = ", ".join(["%s"] * len(columns))
                    cursor.executemany(
                        f"INSERT INTO {name} ({', '.join(columns)}) VALUES ({marks})", values
                    )
            if then is not None:
                asked.execute(then[0], then[1])
        return asked.fetchall() if then is not None else []


def _stopped(error: DBAPIError) -> bool:
    """Whether a statement failed because it was stopped (`SqlTransaction.limited`)."""
    if isinstance(error.orig, psycopg.errors.QueryCanceled):
        return True
    return isinstance(error.orig, sqlite3.OperationalError) and "interrupted" in str(error.orig)


# What SQLite says of a statement beyond its parser's or compiler's limits.
_SQLITE_TOO_COMPLEX = (
    "parser stack overflow",
    "Expression tree is too large",
    "too many SQL variables",
    "too many terms",
    "too many columns",
)


def _too_complex(error: DBAPIError) -> bool:
    """Whether a search's statement is beyond what the store can parse or plan: possible
    only when the search limits are raised past what it runs (docs/search.md#limits)."""
    if isinstance(error.orig, psycopg.Error) and (error.orig.sqlstate or "").startswith("54"):
        return True  # program limit exceeded: statement too complex, stack depth, ...
    return isinstance(error.orig, sqlite3.OperationalError) and any(
        m in str(error.orig) for m in _SQLITE_TOO_COMPLEX
    )


def _too_slow(seconds: float) -> Timeout:
    return Timeout(
        f"The search ran longer than {seconds:g} s, the hub's limit (HUB_SEARCH_TIMEOUT_SECONDS), "
        "and was stopped; narrow its criteria"
    )


def _client_gone() -> Timeout:
    return Timeout("The search was stopped: its client closed the connection")


_DUPLICATE_KEY = re.compile(r"\(res_type, res_id\)=\(([^,]+), ([^)]+)\)")


def _created_meanwhile(pending: Sequence[NewVersion], detail: str) -> Conflict:
    """A new resource's insert found its id taken: another request created it meanwhile.

    The one that failed is named when the database says which (PostgreSQL's detail); the
    error's `resources` lets a transaction Bundle point at the entry that wrote it.
    """
    found = _DUPLICATE_KEY.search(detail)
    keys = (
        [f"{found.group(1)}/{found.group(2)}"]
        if found
        else [f"{n.resource_type}/{n.resource_id}" for n in pending]
    )
    names = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
    subject = "was" if len(keys) == 1 else "(one of them) was"
    error = Conflict(
        f"{names} {subject} created by another request meanwhile; read it again and retry"
    )
    error.resources = tuple(keys)
    return error


def lock_id(key: str) -> int:
    """The advisory lock number of a named lock: a signed 64-bit hash of its name, made here so
    that the name (a client's If-None-Exist, which may hold anything) never reaches the server."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class LockWaits:
    """How long, and how many at once, units of one process wait for a named lock.

    A conditional create waits for another with the same criteria while holding a pooled
    connection and a request thread. Bounding both the wait and the number of waiters keeps
    a burst of them from taking every connection: the rest of the pool goes on answering
    the requests that need no lock.
    """

    def __init__(self, timeout: float, waiters: int) -> None:
        self.timeout_ms = max(1, round(timeout * 1000))
        self.slots = threading.BoundedSemaphore(max(1, waiters))


class SqlTransaction:
    """One unit of work on one connection.

    New resources are not inserted one by one: their rows wait in `_pending` and
    go out as one multi-row insert per table when the unit next runs a statement
    or commits. Every read of the unit goes through `_execute`, which sends them
    first, so the unit still reads its own writes; a transaction Bundle of 100
    creates becomes a handful of statements instead of 500.
    """

    def __init__(self, conn: Connection, waits: LockWaits | None = None) -> None:
        self.conn = conn
        self.dialect = conn.dialect.name
        self._waits = waits or LockWaits(2.0, 1)
        self._pending: list[NewVersion] = []
        self._added: dict[str, list[dict[str, Any]]] = {}  # rows of other tables (lineage)
        # Current versions already known to this unit: prefetched, or written by it.
        self._known: dict[tuple[str, str], Version | None] = {}
        self._live: set[tuple[str, str]] = set()  # found live by `live`, not written since
        self.writing = bool(conn.get_execution_options().get("hub_write"))
        # Set by `limited`: when the statements of the block must stop, and who may stop them.
        self._deadline: float | None = None
        self._limit = 0.0
        self._cancellation: Cancellation | None = None

    def _execute(self, statement: Executable, params: Any = None) -> Any:
        if self._deadline is not None:
            if self._cancellation is not None and self._cancellation.cancelled:
                raise _client_gone()
            if time.monotonic() > self._deadline:
                raise _too_slow(self._limit)
        if self._pending or self._added:
            self.flush()
        return self.conn.execute(statement, params)

    def flush(self, then: tuple[str, Sequence[Any]] | None = None) -> list[Any]:
        """Insert the new resources written so far: their rows, history and index rows.

        `then` (PostgreSQL): a query run right after, in the same round trip; its rows."""
        pending, self._pending = self._pending, []
        added, self._added = self._added, {}
        if not pending and not added:
            return []
        rows: dict[str, list[dict[str, Any]]] = {
            "resources": [_current_row(n) for n in pending],
            "resource_history": [_history_row(n) for n in pending],
        }
        for name in INDEX_TABLES:
            rows[name] = [row for n in pending for row in n.index.get(name, ())]
        rows[outbound_reference.name] = [r for n in pending for r in _reference_rows(n)]
        rows.update(added)
        try:
            if self.dialect == "postgresql":
                driver = self.conn.connection.dbapi_connection
                assert isinstance(driver, psycopg.Connection)
                return insert_rows(
                    driver,
                    {name: (_COLUMNS[name], _values(name, r)) for name, r in rows.items()},
                    then,
                )
            assert then is None, "a query after the inserts is for PostgreSQL"
            for name, table_rows in rows.items():
                if table_rows:
                    self.conn.execute(insert(_TABLES[name]), table_rows)
            return []
        except IntegrityError as e:
            raise _created_meanwhile(pending, str(e.orig)) from None
        except psycopg.IntegrityError as e:
            raise _created_meanwhile(pending, e.diag.message_detail or "") from None
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
            raise Busy("The store is busy; retry the request") from None
        except psycopg.Error as e:
            # As SQLAlchemy would have raised it: callers handle DBAPIError (a retry), and a
            # connection the server closed is not handed out again.
            if self.conn.connection.dbapi_connection is None or e.sqlstate is None:
                self.conn.invalidate()
            raise DBAPIError.instance(None, None, e, psycopg.Error) from None

    def prefetch(self, keys: Sequence[tuple[str, str]]) -> None:
        wanted = [k for k in dict.fromkeys(keys) if k not in self._known]
        found = self._currents(wanted)
        for key in wanted:
            self._known[key] = found.get(key)

    def _currents(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Version]:
        """The current versions (deleted ones too) of these resources, one query a type."""
        by_type: dict[str, list[str]] = {}
        for resource_type, resource_id in keys:
            by_type.setdefault(resource_type, []).append(resource_id)
        found: dict[tuple[str, str], Version] = {}
        for resource_type, ids in by_type.items():
            for row in self._execute(
                select(*_CURRENT_COLUMNS).where(
                    resources.c.res_type == resource_type, resources.c.res_id.in_(ids)
                )
            ):
                found[(row[0], row[1])] = version_of(row)
        return found

    def add_rows(self, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
        if table.name not in _TABLES:
            raise ValueError(f"{table.name} is not a table of the store's writes")
        self._added.setdefault(table.name, []).extend(dict(r) for r in rows)

    def current(self, resource_type: str, resource_id: str) -> Version | None:
        key = (resource_type, resource_id)
        if key in self._known:
            return self._known[key]
        row = self._execute(
            select(*_CURRENT_COLUMNS).where(
                resources.c.res_type == resource_type, resources.c.res_id == resource_id
            )
        ).first()
        return version_of(row) if row else None

    def try_lock(self, key: str) -> bool:
        # SQLite writers already hold the database lock from BEGIN IMMEDIATE.
        if self.dialect != "postgresql":
            return True
        statement = text("SELECT pg_try_advisory_xact_lock(:key)")
        return bool(self._execute(statement, {"key": lock_id(key)}).scalar())

    def lock(self, key: str) -> None:
        if self.try_lock(key):
            return
        waits = self._waits
        if not waits.slots.acquire(blocking=False):
            raise Busy("Too many requests wait for the same resources; retry the request")
        try:
            # lock_timeout bounds this wait only: back to the default once the lock is had.
            self._execute(
                text("SELECT set_config('lock_timeout', :ms, true)"), {"ms": f"{waits.timeout_ms}"}
            )
            try:
                self._execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_id(key)})
            except OperationalError as e:
                if isinstance(e.orig, psycopg.errors.LockNotAvailable):
                    raise Busy(
                        "Another request with the same conditions took too long; retry the request"
                    ) from None
                raise
            self._execute(text("SET LOCAL lock_timeout TO DEFAULT"))
        finally:
            waits.slots.release()

    def version(self, resource_type: str, resource_id: str, version_id: int) -> Version | None:
        row = self._execute(
            select(*_HISTORY_COLUMNS).where(
                resource_history.c.res_type == resource_type,
                resource_history.c.res_id == resource_id,
                resource_history.c.version_id == version_id,
            )
        ).first()
        return version_of(row) if row else None

    def write(self, new: NewVersion, expected_version: int | None) -> None:
        key = (new.resource_type, new.resource_id)
        self._known.pop(key, None)  # until this write is through
        self._live.discard(key)
        if expected_version is None:
            # A new resource: inserted with the others at the next statement or the commit.
            self._pending.append(new)
            self._known[key] = _as_version(new)
            return
        try:
            changed = self._execute(
                update(resources)
                .where(
                    resources.c.res_type == new.resource_type,
                    resources.c.res_id == new.resource_id,
                    resources.c.version_id == expected_version,
                )
                .values(**_row_values(new))
            ).rowcount
            if changed != 1:
                raise self._lost_race(new)
            self._execute(insert(resource_history).values(**_history_row(new)))
        except IntegrityError:
            raise self._lost_race(new) from None
        except OperationalError as e:
            if "locked" in str(e):
                raise Busy("The store is busy; retry the request") from None
            raise
        self._replace_index(new)
        self._known[key] = _as_version(new)

    @staticmethod
    def _lost_race(new: NewVersion) -> Conflict:
        return Conflict(
            f"{new.resource_type}/{new.resource_id} was changed by another request; "
            "read it again and retry"
        )

    def _replace_index(self, new: NewVersion) -> None:
        if new.version_id > 1:
            for table in INDEX_TABLES.values():
                self._execute(
                    delete(table).where(
                        table.c.res_type == new.resource_type, table.c.res_id == new.resource_id
                    )
                )
        for name, rows in new.index.items():
            if rows:
                self._execute(insert(INDEX_TABLES[name]), rows)
        self._replace_references(new)

    def _replace_references(self, new: NewVersion) -> None:
        """The version's outbound references, changing only the rows that differ: an update
        mostly keeps the references it had, and rewriting them cost each update two
        statements and the table's index entries."""
        t = outbound_reference.c
        stored: set[tuple[str, str]] = set()
        if new.version_id > 1:
            mine = (t.res_type == new.resource_type, t.res_id == new.resource_id)
            stored = {
                (r[0], r[1]) for r in self.rows(select(t.target_type, t.target_id).where(*mine))
            }
            gone = stored.difference(new.references)
            if gone:
                self._execute(
                    delete(outbound_reference).where(
                        *mine, tuple_(t.target_type, t.target_id).in_(sorted(gone))
                    )
                )
        added = [k for k in new.references if k not in stored]
        if added:
            self._execute(
                insert(outbound_reference),
                [
                    {"res_type": new.resource_type, "res_id": new.resource_id}
                    | {"target_type": target_type, "target_id": target_id}
                    for target_type, target_id in added
                ],
            )

    def rows(self, statement: Executable) -> Sequence[Any]:
        return self._execute(statement).all()

    def _stop_statement(self) -> None:
        """Stop what the connection runs; called from another thread."""
        driver = self.conn.connection.dbapi_connection
        if isinstance(driver, psycopg.Connection):
            driver.cancel_safe(timeout=5)
        elif isinstance(driver, sqlite3.Connection):
            driver.interrupt()

    @contextmanager
    def limited(self, seconds: float, cancellation: Cancellation | None = None) -> Iterator[None]:
        """The block's statements stop once it has run `seconds`, or when `cancellation` is
        cancelled (its client went away), raising `Timeout`.

        PostgreSQL stops a statement itself (statement_timeout, set for this transaction only);
        SQLite is interrupted by a timer. No statement starts after the time is up, so a search
        of many statements (one per type of a system search) stops too.
        """
        outer = self._deadline, self._limit, self._cancellation
        limit = seconds
        started = time.monotonic()
        deadline = started + seconds
        if cancellation is not None and cancellation.deadline is not None:
            # Searches sharing one time limit (a Bundle's entries) get what is left of it.
            deadline = min(deadline, cancellation.deadline)
            if deadline <= started:
                raise _too_slow(limit)
            seconds = deadline - started
        self._deadline, self._limit = deadline, limit
        self._cancellation = cancellation
        try:
            with ExitStack() as stack:
                if self.dialect == "postgresql":
                    self._execute(
                        text("SELECT set_config('statement_timeout', :ms, true)"),
                        {"ms": str(max(1, round(seconds * 1000)))},
                    )
                else:
                    time_up = Cancellation()
                    stack.enter_context(time_up.watching(self._stop_statement))
                    timer = threading.Timer(seconds, time_up.cancel)
                    timer.daemon = True
                    timer.start()
                    stack.callback(timer.cancel)
                if cancellation is not None:
                    stack.enter_context(cancellation.watching(self._stop_statement))
                try:
                    yield
                except DBAPIError as e:
                    if _too_complex(e):
                        raise TooCostly(
                            "The search is too large for the store to run "
                            f"({str(e.orig).splitlines()[0]}); narrow it"
                        ) from None
                    if not _stopped(e):
                        raise
                    if cancellation is not None and cancellation.cancelled:
                        raise _client_gone() from None
                    raise _too_slow(limit) from None
        finally:
            self._deadline, self._limit, self._cancellation = outer
        if self.dialect == "postgresql" and self.writing:
            # The transaction goes on with writes, which have no time limit.
            self._execute(text("SET LOCAL statement_timeout TO DEFAULT"))

    def execute(
        self, statement: Executable, rows: Sequence[Mapping[str, Any]] | None = None
    ) -> int:
        return int(self._execute(statement, rows).rowcount or 0)

    def lock_row(self, statement: Executable) -> Sequence[Any]:
        if self.dialect == "postgresql":
            statement = statement.with_for_update()  # type: ignore[attr-defined]
        return self._execute(statement).all()

    def replace_index(self, resource_type: str, index: Mapping[str, IndexRows]) -> None:
        ids = list(index)
        if not ids:
            return
        for table in INDEX_TABLES.values():
            self._execute(
                delete(table).where(table.c.res_type == resource_type, table.c.res_id.in_(ids))
            )
        for name, table in INDEX_TABLES.items():
            rows = [row for by_table in index.values() for row in by_table.get(name, ())]
            if rows:
                self._execute(insert(table), rows)

    def load(self, keys: Sequence[tuple[str, str]]) -> list[Version]:
        found = self._currents(keys)
        return [v for k in keys if (v := found.get(k)) is not None and not v.deleted]

    def live(self, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        # What this transaction wrote, or found live already, it does not ask again (a feed
        # batch asks before it writes, the executor once it has, a Provenance names the
        # versions just written). Only positive answers are kept: a resource another
        # transaction creates meanwhile is found at the next question.
        alive = {k for k in dict.fromkeys(keys) if k in self._live or self._is_live(k)}
        keys = [k for k in dict.fromkeys(keys) if k not in alive]
        if not keys:
            return alive
        found = self._ask_live(keys)
        self._live.update(found)
        return alive | found

    def _is_live(self, key: tuple[str, str]) -> bool:
        version = self._known.get(key)
        return version is not None and not version.deleted

    def _ask_live(self, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
        # Every write with references asks this: written for the driver, as building and
        # compiling a SQLAlchemy statement took longer than the database's answer. One probe
        # of the primary key per pair.
        if self.dialect == "postgresql":
            sql = (
                "SELECT res_type, res_id FROM resources WHERE deleted IS false AND "
                "(res_type, res_id) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"
            )
            params: tuple[Any, ...] = ([k[0] for k in keys], [k[1] for k in keys])
            if self._pending or self._added:
                # The new resources go out first, and the question with them: one round trip.
                rows: Sequence[Any] = self.flush(then=(sql, params))
                return {(row[0], row[1]) for row in rows}
            rows = self.conn.exec_driver_sql(sql, params).all()
            return {(row[0], row[1]) for row in rows}
        self.flush()
        found: set[tuple[str, str]] = set()
        for start in range(0, len(keys), _SQLITE_PAIRS):  # within SQLite's variables per query
            chunk = keys[start : start + _SQLITE_PAIRS]
            pairs = ", ".join(["(?, ?)"] * len(chunk))
            sql = (
                "SELECT res_type, res_id FROM resources WHERE deleted IS 0 AND "
                f"(res_type, res_id) IN (VALUES {pairs})"
            )
            rows = self.conn.exec_driver_sql(sql, tuple(v for k in chunk for v in k)).all()
            found.update((row[0], row[1]) for row in rows)
        return found

    def referrers(
        self, targets: Sequence[tuple[str, str]], limit: int
    ) -> list[tuple[str, str, str, str]]:
        by_type = _ids_by_type(targets)
        if not by_type:
            return []
        t = outbound_reference.c
        rows = self._execute(
            select(t.res_type, t.res_id, t.target_type, t.target_id)
            .where(or_(*(and_(t.target_type == k, t.target_id.in_(v)) for k, v in by_type.items())))
            .order_by(t.target_type, t.target_id, t.res_type, t.res_id)
            .limit(limit)
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def _history_where(
        self, resource_type: str | None, resource_id: str | None, since: datetime | None
    ) -> list[ColumnElement[bool]]:
        clauses: list[ColumnElement[bool]] = []
        if resource_type is not None:
            clauses.append(resource_history.c.res_type == resource_type)
        if resource_id is not None:
            clauses.append(resource_history.c.res_id == resource_id)
        if since is not None:
            clauses.append(resource_history.c.last_updated >= since)
        return clauses

    def history(
        self,
        resource_type: str | None,
        resource_id: str | None,
        since: datetime | None,
        before_seq: int | None,
        limit: int,
    ) -> list[Version]:
        clauses = self._history_where(resource_type, resource_id, since)
        if before_seq is not None:
            clauses.append(resource_history.c.seq < before_seq)
        stmt = (
            select(*_HISTORY_COLUMNS)
            .where(*clauses)
            .order_by(resource_history.c.seq.desc())
            .limit(limit)
        )
        return [version_of(r) for r in self._execute(stmt)]

    def history_count(
        self, resource_type: str | None, resource_id: str | None, since: datetime | None
    ) -> int:
        stmt = (
            select(func.count())
            .select_from(resource_history)
            .where(*self._history_where(resource_type, resource_id, since))
        )
        return int(self._execute(stmt).scalar_one())


class SqlRepository:
    def __init__(self, engine: Engine, lock_timeout: float = 2.0) -> None:
        self._single: dict[str, Any] = (
            {"isolation_level": "AUTOCOMMIT"} if engine.dialect.name == "postgresql" else {}
        )
        self.engine = engine
        pool = engine.pool
        size = pool.size() if isinstance(pool, QueuePool) else 1
        # At most three quarters of the pool wait for locks: the last quarter keeps serving
        # everything else (requests that take no lock are quick, so a few connections do).
        self.lock_waits = LockWaits(lock_timeout, size - max(1, size // 4))
        self._read = select(*_CURRENT_COLUMNS).where(
            resources.c.res_type == bindparam("t"), resources.c.res_id == bindparam("i")
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        pool_size: int = 20,
        *,
        pool_timeout: float = 5.0,
        lock_timeout: float = 2.0,
    ) -> SqlRepository:
        return cls(make_engine(url, pool_size, pool_timeout), lock_timeout)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def read(self, resource_type: str, resource_id: str) -> Version | None:
        # One statement needs no transaction: on PostgreSQL, autocommit saves the
        # BEGIN and ROLLBACK round trips.
        with self.connect().execution_options(**self._single) as conn:
            row = conn.execute(self._read, {"t": resource_type, "i": resource_id}).first()
            if not self._single:
                conn.rollback()
        return version_of(row) if row else None

    @contextmanager
    def transaction(self) -> Iterator[SqlTransaction]:
        with self.connect().execution_options(hub_write=True) as conn, conn.begin():
            try:
                tx = SqlTransaction(conn, self.lock_waits)
                yield tx
                tx.flush()
            except OperationalError as e:
                if "locked" in str(e) or "deadlock" in str(e):
                    raise Busy("The store is busy; retry the request") from None
                raise

    @contextmanager
    def snapshot(self) -> Iterator[SqlTransaction]:
        with self.connect() as conn, conn.begin():
            yield SqlTransaction(conn, self.lock_waits)

    def connect(self) -> Connection:
        """A pooled connection, or 503 when none comes free within the pool timeout."""
        try:
            return self.engine.connect()
        except PoolTimeout:
            raise Busy("No database connection came free in time; retry the request") from None

    def close(self) -> None:
        self.engine.dispose()
