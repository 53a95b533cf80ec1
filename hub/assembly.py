"""Building the hub's parts from its settings, in one place.

The API (`hub serve`), the command line and the Celery workers all run the same
parts: a repository on the configured database, the search registries over it,
the context interactions take, and the ingestion service (message store, adapter
registry, mappings, pipeline and a dispatcher). Each entry point asks this module
for them, and closes them when it ends.

Everything here is built on demand from a `Settings` value (`hub.settings`:
`get_settings()` for a server, `load_settings()` for a command); nothing is kept in
a module global, so tests build as many independent hubs as they like.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from hub.ingest.service import IngestService
from hub.interactions.context import Context
from hub.parameters.stored import RegistryHolder
from hub.settings import Settings
from hub.store import Repository, SqlRepository
from hub.store.reader import reader_for

# How feed messages are processed: by Celery workers through the broker, by threads
# inside `hub serve`, or at once in the caller's thread (`hub ingest` without a broker).
DispatchMode = Literal["celery", "threads", "inline"]

# A command line tool runs one request at a time: a small pool is plenty.
COMMAND_POOL_SIZE = 2


def open_repository(
    settings: Settings, *, database_url: str | None = None, pool_size: int | None = None
) -> SqlRepository:
    """The SQL repository on the settings' database (or `database_url`), with its bounded
    pool and lock waits."""
    return SqlRepository.from_url(
        database_url or settings.database_url,
        settings.db_pool_size if pool_size is None else pool_size,
        pool_timeout=settings.db_pool_timeout_seconds,
        lock_timeout=settings.db_lock_timeout_seconds,
    )


def build_context(settings: Settings, repo: Repository | None = None) -> Context:
    """What a serving process's interactions use: the repository (opened here when not
    given), registries that follow the stored SearchParameters, and on PostgreSQL the
    async reader for reads by id (opened by the API when it starts)."""
    if repo is None:
        repo = open_repository(settings)
    holder = RegistryHolder(repo, refresh_seconds=settings.registry_refresh_seconds)
    reader = reader_for(settings.database_url, settings.db_read_connections)
    return Context(repo=repo, registries=holder, settings=settings, reader=reader)


def command_context(settings: Settings, database_url: str | None = None) -> Context:
    """A context for one command line command: a small pool, and registries that look at
    the store only when told to (the command runs once, nothing else changes them)."""
    repo = open_repository(settings, database_url=database_url, pool_size=COMMAND_POOL_SIZE)
    return Context(repo=repo, registries=RegistryHolder(repo), settings=settings)


def ingest_service(
    settings: Settings, ctx: Context | None = None, *, dispatcher: DispatchMode | None = None
) -> IngestService:
    """The ingestion service over `ctx` (a serving context of its own when not given).

    `dispatcher` None chooses by the settings: Celery when a broker is set, else
    threads. Raises `UnknownAdapter` when HUB_ADAPTERS names an adapter not installed.
    """
    return IngestService(ctx or build_context(settings), settings, dispatcher=dispatcher)


def settle() -> None:
    """Called by a process that goes on working once its parts are built (a worker, `hub
    ingest`): what it built stays for its life, so the garbage collector stops looking at
    it. Its full collections otherwise walk these objects (models, registries, mappings)
    again and again: a tenth of a feed worker's CPU."""
    gc.collect()
    gc.freeze()


@contextmanager
def settled() -> Iterator[None]:
    """`settle` for the length of a block (a command that may run inside another process,
    such as a test's): what the block leaves behind is collected as usual afterwards."""
    settle()
    try:
        yield
    finally:
        gc.unfreeze()
