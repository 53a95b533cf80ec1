"""Concurrent writers: https://hl7.org/fhir/R4/http.html#concurrency

Threads released together by a barrier race on one resource. On PostgreSQL
they really overlap (the compare-and-set on the version decides); on SQLite
writers queue on BEGIN IMMEDIATE. Either way: If-Match lets exactly one
writer win, and version numbers are never repeated nor skipped.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from conftest import race
from fastapi.testclient import TestClient

from hub.errors import HubError, status_of
from hub.interactions.context import Context, Request
from hub.interactions.routes import dispatch

BASE = "http://hub.test/fhir"
THREADS = 8


def _call(ctx: Context, req: Request) -> int:
    try:
        return dispatch(ctx, req).status
    except HubError as e:
        return status_of(e)


def _put(ctx: Context, pid: str, family: str, if_match: str | None = None) -> int:
    body: dict[str, Any] = {"resourceType": "Patient", "id": pid, "name": [{"family": family}]}
    req = Request(
        method="PUT",
        base_url=BASE,
        resource_type="Patient",
        resource_id=pid,
        body=body,
        if_match=if_match,
    )
    return _call(ctx, req)


def _versions(ctx: Context, pid: str) -> list[int]:
    with ctx.repo.snapshot() as t:
        rows = t.history("Patient", pid, None, None, 1000)
    return [v.version_id for v in rows]


def _current_version(ctx: Context, pid: str) -> int:
    current = ctx.repo.read("Patient", pid)
    assert current is not None
    return current.version_id


def test_if_match_race_has_exactly_one_winner(ctx: Context, uid: str) -> None:
    pid = f"race-{uid}"
    assert _put(ctx, pid, "Start") == 201
    statuses = race(THREADS, lambda i: _put(ctx, pid, f"Writer{i}", if_match='W/"1"'))

    assert Counter(statuses) == Counter({200: 1, 412: THREADS - 1}), statuses
    assert _current_version(ctx, pid) == 2
    assert _versions(ctx, pid) == [2, 1]
    winner = statuses.index(200)
    current = ctx.repo.read("Patient", pid)
    assert current is not None and current.content is not None
    assert f"Writer{winner}".encode() in current.content


def test_if_match_race_over_http(client: TestClient, ctx: Context, uid: str) -> None:
    pid = f"http-{uid}"
    assert _put(ctx, pid, "Start") == 201

    def put(i: int) -> int:
        r = client.put(
            f"/fhir/Patient/{pid}",
            headers={"If-Match": 'W/"1"'},
            json={"resourceType": "Patient", "id": pid, "name": [{"family": f"H{i}"}]},
        )
        if r.status_code >= 400:
            assert r.json()["resourceType"] == "OperationOutcome"
        else:
            assert r.headers["ETag"] == 'W/"2"'
        return r.status_code

    statuses = race(4, put)
    assert Counter(statuses) == Counter({200: 1, 412: 3}), statuses
    history = client.get(f"/fhir/Patient/{pid}/_history").json()
    assert [e["response"]["etag"] for e in history["entry"]] == ['W/"2"', 'W/"1"']


def test_updates_without_if_match_never_repeat_a_version(ctx: Context, uid: str) -> None:
    pid = f"free-{uid}"
    assert _put(ctx, pid, "Start") == 201
    statuses = race(THREADS, lambda i: _put(ctx, pid, f"Writer{i}"))

    assert set(statuses) <= {200, 409}, statuses
    wins = statuses.count(200)
    assert wins >= 1
    assert _current_version(ctx, pid) == 1 + wins
    assert _versions(ctx, pid) == list(range(1 + wins, 0, -1))


def test_concurrent_create_on_update_of_one_new_id(ctx: Context, uid: str) -> None:
    pid = f"new-{uid}"
    statuses = race(THREADS, lambda i: _put(ctx, pid, f"Writer{i}"))

    assert statuses.count(201) == 1, statuses
    assert set(statuses) <= {200, 201, 409}, statuses
    stored = statuses.count(201) + statuses.count(200)
    assert _current_version(ctx, pid) == stored
    assert _versions(ctx, pid) == list(range(stored, 0, -1))


def test_concurrent_if_match_deletes_and_updates(ctx: Context, uid: str) -> None:
    pid = f"mixed-{uid}"
    assert _put(ctx, pid, "Start") == 201

    def work(i: int) -> int:
        if i % 2:
            return _put(ctx, pid, f"Writer{i}", if_match='W/"1"')
        req = Request(
            method="DELETE",
            base_url=BASE,
            resource_type="Patient",
            resource_id=pid,
            if_match='W/"1"',
        )
        return _call(ctx, req)

    statuses = race(THREADS, work)
    assert sum(s in (200, 204) for s in statuses) == 1, statuses
    assert statuses.count(412) == THREADS - 1
    assert _versions(ctx, pid) == [2, 1]


def test_concurrent_transactions_on_one_resource(ctx: Context, uid: str) -> None:
    pid = f"tx-{uid}"
    assert _put(ctx, pid, "Start") == 201

    def transaction(i: int) -> int:
        body = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "request": {"method": "POST", "url": "Patient"},
                    "resource": {"resourceType": "Patient", "name": [{"family": f"Side{i}"}]},
                },
                {
                    "request": {"method": "PUT", "url": f"Patient/{pid}", "ifMatch": 'W/"1"'},
                    "resource": {
                        "resourceType": "Patient",
                        "id": pid,
                        "name": [{"family": f"T{i}"}],
                    },
                },
            ],
        }
        return _call(ctx, Request(method="POST", base_url=BASE, body=body))

    statuses = race(4, transaction)
    assert Counter(statuses) == Counter({200: 1, 412: 3}), statuses
    assert _versions(ctx, pid) == [2, 1]
    # The losers' POST entries were rolled back with them.
    with ctx.repo.snapshot() as t:
        assert t.history_count("Patient", None, None) == 3


def test_concurrent_conditional_creates_make_one_resource(ctx: Context, uid: str) -> None:
    criteria = f"identifier=urn:mrn|{uid}"

    def create(i: int) -> int:
        body = {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:mrn", "value": uid}],
            "name": [{"family": f"Writer{i}"}],
        }
        req = Request(
            method="POST", base_url=BASE, resource_type="Patient", body=body, if_none_exist=criteria
        )
        return _call(ctx, req)

    statuses = race(THREADS, create)
    assert Counter(statuses) == {201: 1, 200: THREADS - 1}
    req = Request(
        method="GET",
        base_url=BASE,
        resource_type="Patient",
        params=[("identifier", f"urn:mrn|{uid}")],
    )
    body = dispatch(ctx, req).body
    assert body is not None and body["total"] == 1
