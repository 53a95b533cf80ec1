"""What a search may cost: limits, collapsed repeats, a time limit, and clients going away.

A search beyond a limit (criteria, OR values, chain hops, `_has` levels) answers 400
`too-costly` naming the limit, on both stores alike, also as a conditional request or a
Bundle entry; within the limits SQLite answers what PostgreSQL answers. A search that runs
past `search_timeout_seconds` answers 503 `timeout` and leaves its connection usable, and a
client that disconnects cancels its search on the server (docs/search.md#limits).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import text

from hub.api import build_context, create_app
from hub.interactions.context import Context
from hub.search.limits import Limits
from hub.search.parse import parse
from hub.search.query import QueryBuilder
from hub.settings import Settings
from hub.store import SqlRepository
from hub.store.schema import resources

FHIR = {"Content-Type": "application/fhir+json"}
DEFAULTS = Settings()


def _too_costly(r: httpx.Response, setting: str, name: str) -> None:
    assert r.status_code == 400, r.text
    issue = r.json()["issue"][0]
    assert issue["code"] == "too-costly", issue
    assert setting in issue["diagnostics"], issue
    assert issue["expression"] == [name], issue


def _ids(r: httpx.Response) -> list[str]:
    assert r.status_code == 200, r.text
    return sorted(e["resource"]["id"] for e in r.json().get("entry", []))


def _chain(hops: int) -> str:
    return "link:Patient." * hops + "name"


def _has(levels: int) -> str:
    return "_has:Patient:link:" * levels + "name"


def _linked_patients(client: TestClient) -> None:
    """p0 links to p1, p1 to p2, ... p5 (named n0 ... n5): chains and _has to walk.
    Created from p5 down, so that each link names a Patient that exists."""
    for i in reversed(range(6)):
        body: dict[str, Any] = {
            "resourceType": "Patient",
            "id": f"p{i}",
            "name": [{"family": f"n{i}"}],
        }
        if i < 5:
            body["link"] = [{"other": {"reference": f"Patient/p{i + 1}"}, "type": "seealso"}]
        r = client.put(f"/fhir/Patient/p{i}", json=body, headers=FHIR)
        assert r.status_code == 201, r.text


# --- limits ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "setting", "name"),
    [
        (
            "&".join(f"family=x{i}" for i in range(DEFAULTS.search_max_criteria + 1)),
            "HUB_SEARCH_MAX_CRITERIA",
            "family",
        ),
        (
            "family=" + ",".join(f"x{i}" for i in range(DEFAULTS.search_max_or_values + 1)),
            "HUB_SEARCH_MAX_OR_VALUES",
            "family",
        ),
        (
            "family="
            + ",".join(f"x{i}" for i in range(DEFAULTS.search_max_or_values // 2))
            + "&given="
            + ",".join(f"x{i}" for i in range(DEFAULTS.search_max_or_values // 2 + 1)),
            "HUB_SEARCH_MAX_OR_VALUES",
            "given",
        ),
        (
            f"{_chain(DEFAULTS.search_max_chain + 1)}=n",
            "HUB_SEARCH_MAX_CHAIN",
            _chain(DEFAULTS.search_max_chain + 1),
        ),
        (
            f"{_has(DEFAULTS.search_max_has_depth + 1)}=n",
            "HUB_SEARCH_MAX_HAS_DEPTH",
            _has(DEFAULTS.search_max_has_depth + 1),
        ),
        # Beyond the limits: what SQLite could not parse (500 before), refused on both stores.
        (f"{_chain(8)}=n", "HUB_SEARCH_MAX_CHAIN", _chain(8)),
        (f"{_has(10)}=n", "HUB_SEARCH_MAX_HAS_DEPTH", _has(10)),
    ],
    ids=["criteria", "or-values", "or-values-together", "chain", "has", "chain-8", "has-10"],
)
def test_a_search_beyond_a_limit_is_too_costly(
    client: TestClient, query: str, setting: str, name: str
) -> None:
    _too_costly(client.get(f"/fhir/Patient?{query}"), setting, name)
    # Form posts and lenient handling are refused alike: skipping the criterion would widen
    # the result.
    form = {"Content-Type": "application/x-www-form-urlencoded", "Prefer": "handling=lenient"}
    _too_costly(client.post("/fhir/Patient/_search", content=query, headers=form), setting, name)


def test_the_limits_are_settings(repo: SqlRepository, settings: Settings) -> None:
    tight = settings.model_copy(
        update={
            "search_max_criteria": 2,
            "search_max_or_values": 3,
            "search_max_chain": 1,
            "search_max_has_depth": 0,
        }
    )
    with TestClient(create_app(tight, build_context(tight, repo))) as client:
        _linked_patients(client)
        assert _ids(client.get("/fhir/Patient?family=n1&given:missing=true")) == ["p1"]
        _too_costly(
            client.get("/fhir/Patient?family=n1&given:missing=true&gender:missing=true"),
            "HUB_SEARCH_MAX_CRITERIA",
            "gender:missing",
        )
        assert _ids(client.get("/fhir/Patient?family=n1,n2,n3")) == ["p1", "p2", "p3"]
        _too_costly(
            client.get("/fhir/Patient?family=n1,n2,n3,n4"), "HUB_SEARCH_MAX_OR_VALUES", "family"
        )
        assert _ids(client.get("/fhir/Patient?link:Patient.name=n2")) == ["p1"]
        _too_costly(client.get(f"/fhir/Patient?{_chain(2)}=n3"), "HUB_SEARCH_MAX_CHAIN", _chain(2))
        _too_costly(client.get(f"/fhir/Patient?{_has(1)}=n0"), "HUB_SEARCH_MAX_HAS_DEPTH", _has(1))


def test_conditional_requests_and_bundle_entries_have_the_same_limits(client: TestClient) -> None:
    deep = f"{_chain(DEFAULTS.search_max_chain + 1)}=n"
    r = client.post(
        "/fhir/Patient",
        json={"resourceType": "Patient"},
        headers={**FHIR, "If-None-Exist": deep},
    )
    _too_costly(r, "HUB_SEARCH_MAX_CHAIN", _chain(DEFAULTS.search_max_chain + 1))
    r = client.put(f"/fhir/Patient?{deep}", json={"resourceType": "Patient"}, headers=FHIR)
    _too_costly(r, "HUB_SEARCH_MAX_CHAIN", _chain(DEFAULTS.search_max_chain + 1))
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Patient?{deep}"}},
            {"request": {"method": "GET", "url": "Patient?family=n"}},
        ],
    }
    r = client.post("/fhir", json=bundle, headers=FHIR)
    assert r.status_code == 200, r.text
    first, second = (e["response"] for e in r.json()["entry"])
    assert first["status"].startswith("400"), first
    assert first["outcome"]["issue"][0]["code"] == "too-costly"
    assert second["status"].startswith("200"), second


# --- identical criteria ------------------------------------------------------------------


def test_identical_criteria_are_one(ctx: Context) -> None:
    limits = Limits.of(ctx.settings)
    request = parse(ctx.registry, ["Patient"], [("name", "a")] * 500, limits=limits)
    assert len(request.criteria) == 1
    # One condition in the SQL: the searched type, not deleted, and the one criterion.
    clauses = QueryBuilder("http://hub.test/fhir", ctx.registry).where("Patient", request)
    assert len(clauses) == 3
    assert str(clauses[-1].compile()).count("search_string.value LIKE") == 1
    # The same values in another order or repeated are the same condition too.
    request = parse(
        ctx.registry,
        ["Patient"],
        [("name", "a,b"), ("name", "b,a"), ("name", "b,b,a"), ("name:exact", "a")],
        limits=limits,
    )
    assert [c.values for c in request.criteria] == [("a", "b"), ("a",)]
    # Repeated identical includes are one include.
    request = parse(ctx.registry, ["Observation"], [("_include", "Observation:subject")] * 3)
    assert len(request.includes) == 1


def test_a_criterion_repeated_500_times_answers_as_once(client: TestClient) -> None:
    _linked_patients(client)
    once = client.get("/fhir/Patient?name=n1")
    repeated = client.get("/fhir/Patient?" + "&".join(["name=n1"] * 500))
    assert _ids(once) == _ids(repeated) == ["p1"]
    assert once.json()["total"] == repeated.json()["total"] == 1


# --- SQLite answers the shapes within the limits, as PostgreSQL does ----------------------


def test_the_largest_searches_within_the_limits_are_answered(client: TestClient) -> None:
    """On SQLite, chains of 8 hops, `_has` 10 deep and ORs of 500 values answered 500 (its
    parser's stack and expression depth); within the limits every shape is answered."""
    _linked_patients(client)
    chain, has = DEFAULTS.search_max_chain, DEFAULTS.search_max_has_depth
    many = DEFAULTS.search_max_or_values
    assert chain >= 4 and has >= 2 and many >= 1000  # the shapes below are those of the limits
    assert _ids(client.get(f"/fhir/Patient?{_chain(4)}=n4")) == ["p0"]
    assert _ids(client.get(f"/fhir/Patient?{_has(2)}=n0")) == ["p2"]
    values = ",".join([*(f"x{i}" for i in range(many - 1)), "n3"])
    assert _ids(client.get(f"/fhir/Patient?name={values}")) == ["p3"]
    five_hundred = ",".join([*(f"x{i}" for i in range(499)), "n3"])
    assert _ids(client.get(f"/fhir/Patient?name={five_hundred}")) == ["p3"]
    # All of it at once: the deepest chain inside the deepest _has, every value OR-ed, with
    # the modifiers that add subqueries, a sort and a count.
    deepest = "_has:Patient:link:" * has + "link:Patient." * chain
    codes = ",".join(f"urn:s|x{i}" for i in range(many))
    r = client.get(
        f"/fhir/Patient?{deepest}identifier:not={codes}&_sort=-birthdate,name&_total=accurate"
    )
    assert r.status_code == 200, r.text
    r = client.get(f"/fhir/Patient?{deepest}name:missing=true&_total=accurate")
    assert r.status_code == 200, r.text
    criteria = "&".join(f"{deepest}name=x{i}" for i in range(DEFAULTS.search_max_criteria))
    r = client.get(f"/fhir/Patient?{criteria}&_total=accurate")
    assert r.status_code == 200, r.text
    assert r.json()["total"] == 0


def test_a_search_the_store_cannot_parse_is_too_costly(
    repo: SqlRepository, settings: Settings
) -> None:
    """With the limits raised past what SQLite parses, it answers 400, not 500."""
    raised = settings.model_copy(update={"search_max_chain": 12})
    with TestClient(create_app(raised, build_context(raised, repo))) as client:
        r = client.get(f"/fhir/Patient?{_chain(12)}=n")
    if repo.dialect == "sqlite":
        assert r.status_code == 400, r.text
        assert r.json()["issue"][0]["code"] == "too-costly"
    else:
        assert _ids(r) == []


# --- the time limit ----------------------------------------------------------------------


SLOW_ROWS = 50_000
# 600 patterns, each LIKE '%…%' over every row: seconds of work, on either store.
SLOW = "/fhir/Patient?_summary=count&name:contains=" + ",".join(f"zz{i}" for i in range(600))


def _many_names(repo: SqlRepository) -> None:
    """Index rows of many Patients' names, written straight in: work for a slow search."""
    with repo.engine.begin() as conn:
        conn.execute(
            text(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :rows) "
                "INSERT INTO search_string (res_type, res_id, param, value, exact) "
                "SELECT 'Patient', 'slow' || i, 'name', 'name' || i, 'Name' || i FROM n"
            ),
            {"rows": SLOW_ROWS},
        )


@pytest.fixture()
def one_connection(repo: SqlRepository, database_url: str) -> Iterator[SqlRepository]:
    """A store of one pooled connection (PostgreSQL): the next request reuses the one before."""
    single = SqlRepository.from_url(database_url, pool_size=1)
    yield single
    single.close()


def test_a_search_past_its_time_limit_stops_with_503(
    repo: SqlRepository, one_connection: SqlRepository, settings: Settings
) -> None:
    _many_names(repo)
    quick = settings.model_copy(update={"search_timeout_seconds": 0.2})
    with TestClient(create_app(quick, build_context(quick, one_connection))) as client:
        r = client.get(SLOW)
        assert r.status_code == 503, r.text
        issue = r.json()["issue"][0]
        assert issue["code"] == "timeout", issue
        assert "HUB_SEARCH_TIMEOUT_SECONDS" in issue["diagnostics"]
        # The connection is usable afterwards: the next search answers.
        r = client.get("/fhir/Patient?_id=slow1&_total=accurate")
        assert r.status_code == 200, r.text
        with one_connection.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM search_string")).scalar() == SLOW_ROWS
    # A statement of a write transaction after a search has no time limit.
    with one_connection.transaction() as tx:
        with tx.limited(0.2):
            tx.rows(resources.select().limit(1))
        if one_connection.dialect == "postgresql":
            assert tx.rows(text("SHOW statement_timeout"))[0][0] == "0"


# --- a client that goes away -------------------------------------------------------------


class _Server:
    """The app served by uvicorn in a thread, on a port of its own."""

    def __init__(self, ctx: Context, settings: Settings) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        config = uvicorn.Config(create_app(settings, ctx), log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]})

    def __enter__(self) -> _Server:
        self.thread.start()
        _until(lambda: self.server.started, "the server did not start")
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def _until(condition: Any, message: str, seconds: float = 20.0) -> None:
    """Wait for `condition()` to hold; the bound only ends a test that would otherwise hang."""
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, message
        time.sleep(0.05)


@pytest.mark.e2e
def test_a_client_that_disconnects_cancels_its_search_in_postgresql(postgres_url: str) -> None:
    """pg_stat_activity shows the server's statements; SQLite's are interrupted alike."""
    single = SqlRepository.from_url(postgres_url, pool_size=1)
    patient = Settings(
        database_url=postgres_url,
        public_base_url="http://hub.test/fhir",
        search_timeout_seconds=600,
    )
    dsn = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    database = dsn.rsplit("/", 1)[1]
    watch = psycopg.connect(dsn, autocommit=True)
    locker = psycopg.connect(dsn)

    def blocked() -> int:
        row = watch.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND state = 'active' "
            "AND wait_event_type = 'Lock' AND query LIKE %s",
            (database, "%search_string%"),
        ).fetchone()
        return int(row[0]) if row else 0

    try:
        with _Server(build_context(patient, single), patient) as server:
            # A search held up as long as the lock is: a slow statement, whatever the machine.
            locker.execute("LOCK TABLE resources IN ACCESS EXCLUSIVE MODE")
            client = socket.create_connection(("127.0.0.1", server.port))
            client.sendall(b"GET /fhir/Patient?name=slow HTTP/1.1\r\nHost: hub.test\r\n\r\n")
            _until(lambda: blocked() == 1, "the search did not start")
            client.close()
            _until(lambda: blocked() == 0, "the search ran on after its client left")
            locker.rollback()
            # The one pooled connection went back to the pool, usable.
            r = httpx.get(f"http://127.0.0.1:{server.port}/fhir/Patient?name=x", timeout=30)
            assert r.status_code == 200, r.text
    finally:
        locker.close()
        watch.close()
        single.close()


def test_sort_keys_repeated_are_one_and_too_many_are_too_costly(client: TestClient) -> None:
    r = client.post(
        "/fhir/Patient/_search",
        data={"_sort": ",".join(["birthdate", "-birthdate"] * 1500)},
    )
    assert r.status_code == 200, r.text
    codes = ["birthdate", "family", "given", "gender", "address", "name", "phone", "email", "_id"]
    r = client.get("/fhir/Patient", params={"_sort": ",".join(codes)})
    _too_costly(r, "HUB_SEARCH_MAX_SORT", "_sort")
    r = client.get("/fhir/Patient", params={"_sort": ",".join(codes[:8])})
    assert r.status_code == 200, r.text


def test_bundle_entries_share_the_bundles_cancellation(ctx: Context) -> None:
    """A client gone while its batch runs stops the entries' searches too."""
    from hub.interactions.context import Request
    from hub.interactions.routes import dispatch
    from hub.store.cancel import Cancellation

    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": "Patient?gender=male"}}] * 2,
    }
    req = Request(method="POST", base_url="http://hub.test/fhir", body=batch)
    req.cancel = Cancellation()
    req.cancel.cancel()  # the client went away
    result = dispatch(ctx, req)
    assert result.body is not None
    statuses = [e["response"]["status"] for e in result.body["entry"]]
    assert statuses == ["503 Service Unavailable"] * 2, result.body


def test_a_search_past_a_shared_deadline_stops_before_it_starts(repo: SqlRepository) -> None:
    from hub.errors import Timeout
    from hub.store.cancel import Cancellation

    shared = Cancellation()
    shared.deadline = time.monotonic() - 1
    with repo.snapshot() as tx, pytest.raises(Timeout), tx.limited(30, shared):
        tx.rows(text("SELECT 1"))


def test_the_sqlite_pool_has_the_configured_size_and_timeout(tmp_path: Any) -> None:
    from hub.errors import Busy

    repo = SqlRepository.from_url(f"sqlite:///{tmp_path / 'pool.db'}", 2, pool_timeout=0.2)
    try:
        held = [repo.connect(), repo.connect()]
        with pytest.raises(Busy):
            repo.connect()
        for conn in held:
            conn.close()
    finally:
        repo.close()
