"""Shared fixtures: the hub on SQLite and on the real PostgreSQL server.

Every storage-touching test runs on both backends through the `backend`
parameter. PostgreSQL tests get a database of their own per test run (one per
xdist worker), created on the server at HUB_TEST_POSTGRES_URL (by default the
`postgres` database of 127.0.0.1:5432, which every stock server has); tables
are emptied before each test. With CI=true an unreachable server fails the run
instead of skipping, and without CI the run ends with a banner counting the
tests skipped for want of a server.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
from fastapi.testclient import TestClient

from hub.api import build_context, create_app
from hub.interactions.context import Context
from hub.settings import Settings
from hub.store import SqlRepository
from hub.store.migrate import upgrade
from hub.store.schema import INDEX_TABLES

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = ROOT / "alembic"
PG_SERVER = os.environ.get("HUB_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TABLES = (
    *INDEX_TABLES,
    "outbound_reference",
    "resource_history",
    "resources",
    "lineage",
    "message_waits",
    "messages",
)


# What a skip for want of a server says, so that the summary can count them.
UNREACHABLE = "is unreachable"


def _pg_unavailable() -> str | None:
    try:
        with psycopg.connect(PG_SERVER, connect_timeout=3):
            return None
    except psycopg.OperationalError as e:
        return f"PostgreSQL at {PG_SERVER} {UNREACHABLE}: {e}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say loudly when tests were skipped because a server was missing: green is not whole."""
    missed = [
        r
        for r in terminalreporter.stats.get("skipped", [])
        if UNREACHABLE in str(getattr(r, "longrepr", "")) or "not installed" in str(r.longrepr)
    ]
    if missed:
        terminalreporter.write_sep(
            "!",
            f"{len(missed)} test{'s were' if len(missed) != 1 else ' was'} SKIPPED: "
            "a server it needs is missing "
            "(see the skip reasons above; CI=true makes this a failure)",
            red=True,
            bold=True,
        )


def race(n: int, work: Callable[[int], T]) -> list[T]:
    """Run `work(i)` in n threads started together; return the results in thread order."""
    barrier = threading.Barrier(n)
    results: list[T | None] = [None] * n
    failures: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = work(i)
        except BaseException as e:  # surfaced below, with the thread's own traceback lost
            failures.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not failures, failures
    return results  # type: ignore[return-value]  # every slot is set once no thread failed


def require_server(reason: str | None) -> None:
    """Skip the test when a server it needs is unreachable (`reason`); fail it with CI=true."""
    if reason is None:
        return
    if IN_CI:
        pytest.fail(reason + " (CI=true: a missing server is a failure)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_url(worker_id: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test run (and xdist worker)."""
    require_server(_pg_unavailable())
    name = f"hub_test_{os.getpid()}_{worker_id}".replace("-", "_")
    with psycopg.connect(PG_SERVER, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    server = PG_SERVER.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    url = f"{server}/{name}"
    upgrade(url, MIGRATIONS)
    yield url
    with psycopg.connect(PG_SERVER, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'hub.db'}"
    upgrade(url, MIGRATIONS)
    return url


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(name))


@pytest.fixture(scope="session")
def session_repo(database_url: str) -> Iterator[SqlRepository]:
    repo = SqlRepository.from_url(database_url, pool_size=10)
    yield repo
    repo.close()


@pytest.fixture()
def repo(session_repo: SqlRepository) -> SqlRepository:
    """The store, emptied before the test."""
    with session_repo.engine.begin() as conn:
        for table in TABLES:
            conn.exec_driver_sql(f"DELETE FROM {table}")
    return session_repo


@pytest.fixture()
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, public_base_url="http://hub.test/fhir")


@pytest.fixture()
def ctx(repo: SqlRepository, settings: Settings) -> Context:
    return build_context(settings, repo)


@pytest.fixture()
def client(ctx: Context, settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, ctx), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture()
def uid() -> str:
    """A value unique to the test, for identifiers."""
    return uuid.uuid4().hex[:12]


@pytest.fixture(scope="session")
def worker_id() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")
