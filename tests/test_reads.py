"""Reads by id on the event loop (PostgreSQL): batching, freshness, failures, HTTP.

On PostgreSQL a plain `GET [base]/{type}/{id}` is answered by `hub.api.reads`
through `hub.store.reader.AsyncReader`; on SQLite it stays on the request
threads. Both must answer exactly as the read interaction specifies.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from hub.api import build_context, create_app
from hub.errors import Busy
from hub.interactions.context import Context
from hub.settings import Settings
from hub.store import SqlRepository
from hub.store.reader import AsyncReader, conninfo

FHIR = {"Content-Type": "application/fhir+json"}


def create(client: TestClient, family: str) -> dict[str, Any]:
    r = client.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": family}]})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


@pytest.fixture()
def pg_repo(postgres_url: str) -> Iterator[SqlRepository]:
    repo = SqlRepository.from_url(postgres_url, pool_size=5)
    yield repo
    repo.close()


@pytest.fixture()
def pg_ctx(pg_repo: SqlRepository, postgres_url: str) -> Context:
    return build_context(Settings(database_url=postgres_url), pg_repo)


@pytest.fixture()
def pg_client(pg_ctx: Context, postgres_url: str) -> Iterator[TestClient]:
    app = create_app(Settings(database_url=postgres_url), pg_ctx)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert pg_ctx.reader is not None and pg_ctx.reader.opened
        yield client
    assert not pg_ctx.reader.opened


def test_reads_stay_on_threads_on_sqlite(sqlite_url: str) -> None:
    settings = Settings(database_url=sqlite_url)
    repo = SqlRepository.from_url(sqlite_url)
    ctx = build_context(settings, repo)
    assert ctx.reader is None
    with TestClient(create_app(settings, ctx), raise_server_exceptions=False) as client:
        made = create(client, "Thread")
        assert client.get(f"/fhir/Patient/{made['id']}").json() == made
    repo.close()


def test_concurrent_reads_share_one_query(
    pg_client: TestClient, pg_ctx: Context, postgres_url: str
) -> None:
    ids = [create(pg_client, f"Batch{i}")["id"] for i in range(3)]

    async def main() -> tuple[list[Any], int]:
        reader = AsyncReader(postgres_url, connections=1)
        await reader.open()
        try:
            keys = [("Patient", ids[i % 3]) for i in range(39)] + [("Patient", "missing")]
            found = await asyncio.gather(*(reader.read(t, i) for t, i in keys))
            return found, reader.queries
        finally:
            await reader.close()

    found, queries = asyncio.run(main())
    assert queries == 1
    assert [v.resource_id for v in found[:39]] == [ids[i % 3] for i in range(39)]
    assert found[39] is None
    assert all(v.content and b'"Batch' in v.content for v in found[:39])


def test_reads_go_through_the_reader_and_answer_like_the_interaction(
    pg_client: TestClient, pg_ctx: Context
) -> None:
    assert pg_ctx.reader is not None
    made = create(pg_client, "Fast")
    before = pg_ctx.reader.queries
    r = pg_client.get(f"/fhir/Patient/{made['id']}")
    assert r.status_code == 200
    assert r.json() == made
    assert r.headers["etag"] == 'W/"1"'
    assert r.headers["content-type"] == "application/fhir+json; charset=utf-8"
    assert "last-modified" in r.headers
    assert pg_ctx.reader.queries == before + 1

    # Conditional reads.
    r = pg_client.get(f"/fhir/Patient/{made['id']}", headers={"If-None-Match": 'W/"1"'})
    assert r.status_code == 304 and r.content == b""
    since = pg_client.get(f"/fhir/Patient/{made['id']}").headers["last-modified"]
    r = pg_client.get(f"/fhir/Patient/{made['id']}", headers={"If-Modified-Since": since})
    assert r.status_code == 304

    # A write is seen by the next read.
    changed = {**made, "name": [{"family": "Faster"}]}
    assert pg_client.put(f"/fhir/Patient/{made['id']}", json=changed).status_code == 200
    r = pg_client.get(f"/fhir/Patient/{made['id']}")
    assert r.json()["name"] == [{"family": "Faster"}] and r.headers["etag"] == 'W/"2"'

    # Errors: OperationOutcome with the interaction's status.
    assert pg_client.delete(f"/fhir/Patient/{made['id']}").status_code in (200, 204)
    r = pg_client.get(f"/fhir/Patient/{made['id']}")
    assert r.status_code == 410 and r.headers["etag"] == 'W/"3"'
    assert r.json()["issue"][0]["code"] == "deleted"
    r = pg_client.get("/fhir/Patient/no-such-id")
    assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"
    assert pg_ctx.reader.queries == before + 7


def test_other_requests_pass_through(pg_client: TestClient, pg_ctx: Context) -> None:
    assert pg_ctx.reader is not None
    made = create(pg_client, "Through")
    before = pg_ctx.reader.queries
    # A query string, HEAD, an unknown type, an id FHIR does not allow: the full routes answer.
    r = pg_client.get(f"/fhir/Patient/{made['id']}?_format=json")
    assert r.status_code == 200 and r.json() == made
    assert pg_client.head(f"/fhir/Patient/{made['id']}").status_code == 200
    r = pg_client.get(f"/fhir/Patient/{made['id']}/_history")
    assert r.status_code == 200 and r.json()["total"] == 1
    r = pg_client.get(f"/fhir/Unicorn/{made['id']}")
    assert r.status_code == 404 and "Unicorn" in r.json()["issue"][0]["diagnostics"]
    assert pg_ctx.reader.queries == before


def test_a_lost_connection_is_replaced_and_the_read_answered(
    pg_client: TestClient, pg_ctx: Context, postgres_url: str
) -> None:
    made = create(pg_client, "Reconnect")
    url = conninfo(postgres_url)
    with psycopg.connect(url, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = 'hub-reads' AND datname = current_database()"
        ).fetchone()
    assert killed is not None and killed[0] >= 1
    r = pg_client.get(f"/fhir/Patient/{made['id']}")
    assert r.status_code == 200, r.text
    assert r.json()["id"] == made["id"]


def test_an_unavailable_store_answers_busy(pg_client: TestClient, postgres_url: str) -> None:
    async def main() -> BaseException | None:
        reader = AsyncReader(postgres_url, connections=1)
        await reader.open()
        await reader.close()
        try:
            await reader.read("Patient", "x")
        except BaseException as e:
            return e
        return None

    error = asyncio.run(main())
    assert isinstance(error, Busy)


def test_sync_and_async_reads_agree(pg_client: TestClient, pg_repo: SqlRepository) -> None:
    made = create(pg_client, "Agree")
    by_thread = pg_repo.read("Patient", made["id"])
    body = pg_client.get(f"/fhir/Patient/{made['id']}").content
    assert by_thread is not None and by_thread.content == body


def test_closing_answers_waiting_reads_and_the_reader_opens_again(
    pg_client: TestClient, postgres_url: str
) -> None:
    made = create(pg_client, "Reopen")
    reader = AsyncReader(postgres_url, connections=1)

    async def closing_with_reads_waiting() -> list[BaseException | Any]:
        await reader.open()
        fetch = reader._fetch

        async def slow(keys: list[tuple[str, str]]) -> dict[Any, Any]:
            await asyncio.sleep(30)
            return {}

        reader._fetch = slow  # type: ignore[method-assign]
        first = asyncio.create_task(reader.read("Patient", made["id"]))  # holds the connection
        await asyncio.sleep(0.05)
        second = asyncio.create_task(reader.read("Patient", made["id"]))  # waits for it
        await asyncio.sleep(0.05)
        reader._fetch = fetch  # type: ignore[method-assign]
        await reader.close()
        return await asyncio.gather(first, second, return_exceptions=True)

    async def reopened() -> Any:
        await reader.open()
        try:
            return await asyncio.wait_for(reader.read("Patient", made["id"]), 10)
        finally:
            await reader.close()

    answers = asyncio.run(closing_with_reads_waiting())
    assert all(isinstance(a, Busy) for a in answers), answers
    version = asyncio.run(reopened())
    assert version is not None and version.resource_id == made["id"]


def test_a_malformed_host_header_is_not_echoed(pg_client: TestClient) -> None:
    r = pg_client.post(
        "/fhir/Patient",
        json={"resourceType": "Patient"},
        headers={"Host": "evil.example/x?y="},
    )
    assert r.status_code == 201
    assert "evil" not in r.headers["location"]
