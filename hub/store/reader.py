"""Reads by id on the event loop (PostgreSQL): concurrent reads share one query.

A read by id is one primary-key lookup; what it costs is everything around it:
a hop to a request thread, a pooled connection, a round trip and a statement per
request. Here reads wait on the event loop instead, and the reads that arrive
while a query is out are answered together by the next one (one prepared
statement over `unnest` of the keys). An idle server still sends a lone read on
the next turn of the loop; a busy one answers tens of reads per round trip. Each
query starts after the reads it answers arrived, so a read still sees every write
committed before it was made.
"""

from __future__ import annotations

import asyncio
import logging

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy.engine import make_url

from hub.errors import Busy
from hub.store.repository import Version
from hub.store.sql import version_of

log = logging.getLogger("hub.store.reader")

Key = tuple[str, str]

_READ = (
    "SELECT r.res_type, r.res_id, r.version_id, r.last_updated, r.deleted, r.content,"
    " r.content_hash FROM unnest(%s::text[], %s::text[]) AS k(t, i)"
    " JOIN resources r ON r.res_type = k.t AND r.res_id = k.i"
)


def conninfo(database_url: str) -> str:
    """The libpq connection string of a `postgresql+psycopg://` SQLAlchemy URL."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


class AsyncReader:
    """Batched reads by id over a small pool of autocommit connections.

    `connections` bounds the queries in flight; the reads arriving meanwhile form
    the next batch, so a larger pool gives smaller batches, not more throughput.
    """

    def __init__(self, database_url: str, connections: int = 2, max_batch: int = 500) -> None:
        self._conninfo = conninfo(database_url)
        self._connections = connections
        self._max_batch = max_batch
        self._waiting: dict[Key, list[asyncio.Future[Version | None]]] = {}
        self._gathering = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._pool: AsyncConnectionPool | None = None
        self._slots = asyncio.Semaphore(connections)
        self.queries = 0  # statements sent, for operators (and tests) comparing with reads

    @property
    def opened(self) -> bool:
        return self._pool is not None

    async def open(self) -> None:
        """Open the pool on the running loop (the app's lifespan); until then reads go elsewhere."""
        pool = AsyncConnectionPool(
            self._conninfo,
            min_size=self._connections,
            max_size=self._connections,
            open=False,
            kwargs={"autocommit": True, "application_name": "hub-reads"},
            name="hub-reads",
            timeout=10.0,  # waiting longer for a connection than this: 503
        )
        # Not waiting: a server started before its database connects in the background,
        # and reads meanwhile answer 503 once the pool timeout passes.
        await pool.open(wait=False)
        # Made on this loop: a semaphore belongs to the loop that first waits on it.
        self._slots = asyncio.Semaphore(self._connections)
        self._waiting, self._gathering, self._tasks = {}, False, set()
        self._pool = pool

    async def close(self) -> None:
        """Answer every read still waiting with 503, then close the pool."""
        pool, self._pool = self._pool, None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._settle(self._waiting, error=_unavailable())
        self._waiting, self._gathering = {}, False
        if pool is not None:
            await pool.close()

    async def read(self, resource_type: str, resource_id: str) -> Version | None:
        future: asyncio.Future[Version | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault((resource_type, resource_id), []).append(future)
        if not self._gathering:
            self._gather()
        return await future

    def _gather(self) -> None:
        """Start the task that answers the reads waiting now and those arriving until it runs."""
        self._gathering = True
        task = asyncio.create_task(self._answer_batch())
        self._tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)

    async def _answer_batch(self) -> None:
        batch: dict[Key, list[asyncio.Future[Version | None]]] = {}
        try:
            async with self._slots:
                # Everything that arrived while this task waited for a free connection.
                batch, self._waiting = self._waiting, {}
                self._gathering = False
                if len(batch) > self._max_batch:
                    keys = list(batch)
                    self._waiting = {k: batch.pop(k) for k in keys[self._max_batch :]}
                    self._gather()
                found = await self._fetch(list(batch))
        except asyncio.CancelledError:  # the reader is closing
            if not batch:
                self._gathering = False  # cancelled before it took the waiting reads
            self._settle(batch, error=_unavailable())
            raise
        except Exception as e:  # every waiting request gets the failure, none hangs
            is_db = isinstance(e, psycopg.OperationalError)
            self._settle(batch, error=_unavailable() if is_db else e)
            return
        self._settle(batch, found=found)

    @staticmethod
    def _settle(
        batch: dict[Key, list[asyncio.Future[Version | None]]],
        found: dict[Key, Version] | None = None,
        error: BaseException | None = None,
    ) -> None:
        for key, futures in batch.items():
            for future in futures:
                if future.done():  # a client that went away cancelled its future
                    continue
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result((found or {}).get(key))

    async def _fetch(self, keys: list[Key]) -> dict[Key, Version]:
        types = [k[0] for k in keys]
        ids = [k[1] for k in keys]
        pool = self._pool
        if pool is None:
            raise psycopg.OperationalError("the read pool is closed")
        for attempt in (1, 2):
            try:
                async with pool.connection() as conn:
                    self.queries += 1
                    cursor = conn.cursor(binary=True)
                    await cursor.execute(_READ, (types, ids), prepare=True)
                    rows = await cursor.fetchall()
                return {(row[0], row[1]): version_of(row) for row in rows}
            except PoolTimeout:
                raise  # no connection came: the database is down or the pool exhausted
            except psycopg.OperationalError:
                # A connection the server closed (a restart, an idle timeout): the pool drops
                # it; its idle siblings are likely gone too, so check them all, then retry once.
                if attempt == 2:
                    raise
                log.warning("read connection lost; retrying once", exc_info=True)
                await pool.check()
        raise AssertionError("unreachable")


def _unavailable() -> Busy:
    return Busy("The store is unavailable; retry the request")


def reader_for(database_url: str, connections: int) -> AsyncReader | None:
    """An async reader on PostgreSQL; None on SQLite, whose reads stay on threads."""
    if not database_url.startswith("postgresql"):
        return None
    return AsyncReader(database_url, connections)
