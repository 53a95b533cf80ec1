"""Writes racing another connection's uncommitted rows (PostgreSQL).

New resources are inserted together, when their unit next runs a statement or
commits (`hub.store.sql.SqlTransaction`); these tests hold a row open on a raw
connection so that the insert meets it, and check that the answer is still the
one a client must see: 409 naming the entry that wrote the resource, 503 for a
deadlock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import pytest
from conftest import TABLES
from fastapi.testclient import TestClient

from hub.api import build_context, create_app
from hub.settings import Settings
from hub.store import SqlRepository
from hub.store.reader import conninfo


@pytest.fixture()
def pg(postgres_url: str) -> Iterator[tuple[TestClient, str]]:
    repo = SqlRepository.from_url(postgres_url, pool_size=5)
    with repo.engine.begin() as conn:
        for table in TABLES:
            conn.exec_driver_sql(f"DELETE FROM {table}")
    settings = Settings(database_url=postgres_url, public_base_url="http://hub.test/fhir")
    with TestClient(
        create_app(settings, build_context(settings, repo)), raise_server_exceptions=False
    ) as client:
        yield client, conninfo(postgres_url)
    repo.close()


def hold(dsn: str, resource_id: str) -> psycopg.Connection[Any]:
    """A connection that has inserted Patient/`resource_id` and not committed."""
    other = psycopg.connect(dsn)
    other.execute(
        "INSERT INTO resources (res_type, res_id, version_id, last_updated, deleted, content)"
        " VALUES ('Patient', %s, 1, %s, false, %s)",
        (resource_id, datetime.now(UTC), b"{}"),
    )
    return other


def post_meanwhile(client: TestClient, body: dict[str, Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: out.append(client.post("/fhir", json=body)))
    thread.start()
    time.sleep(1.0)  # the Bundle is now waiting on the held row
    return thread, out


def put(resource_id: str) -> dict[str, Any]:
    return {
        "resource": {"resourceType": "Patient", "id": resource_id, "active": True},
        "request": {"method": "PUT", "url": f"Patient/{resource_id}"},
    }


def transaction(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def outcome(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]  # type: ignore[no-any-return]


@pytest.mark.parametrize("later", ["an update", "the commit"])
def test_a_resource_created_meanwhile_is_a_conflict_of_its_own_entry(
    pg: tuple[TestClient, str], later: str
) -> None:
    client, dsn = pg
    if later == "an update":  # the pending insert of x goes out before entry 1's lookup of y
        assert (
            client.put("/fhir/Patient/y", json={"resourceType": "Patient", "id": "y"}).status_code
            == 201
        )
        bundle = transaction(put("x"), put("y"))
    else:  # nothing runs after entry 1: the insert of x goes out at the commit
        bundle = transaction(
            {
                "resource": {"resourceType": "Patient"},
                "request": {"method": "POST", "url": "Patient"},
            },
            put("x"),
        )
    other = hold(dsn, "x")
    thread, out = post_meanwhile(client, bundle)
    other.commit()
    other.close()
    thread.join(30)
    expected = 0 if later == "an update" else 1
    issue = outcome(out[0], 409)
    assert issue["code"] == "conflict"
    assert issue["expression"] == [f"Bundle.entry[{expected}]"]
    assert "Patient/x" in issue["diagnostics"]
    assert client.get("/fhir/Patient/y").json().get("active") is None  # nothing of it stayed


def test_a_deadlock_answers_503(pg: tuple[TestClient, str]) -> None:
    client, dsn = pg
    other = hold(dsn, "b")
    thread, out = post_meanwhile(client, transaction(put("a"), put("b")))
    try:  # the Bundle holds a and waits for b; this waits for a: PostgreSQL ends one of them
        other.execute(
            "INSERT INTO resources (res_type, res_id, version_id, last_updated, deleted, content)"
            " VALUES ('Patient', 'a', 1, now(), false, '\\x7b7d')"
        )
        other.commit()
        won = True
    except psycopg.errors.DeadlockDetected:
        other.rollback()
        won = False
    other.close()
    thread.join(30)
    if won:  # PostgreSQL chose the Bundle: the client is told to retry
        issue = outcome(out[0], 503)
        assert issue["code"] == "transient"
    else:  # it chose the raw connection: the Bundle went through
        assert out[0].status_code == 200, out[0].text
