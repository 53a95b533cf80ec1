"""Bursts of conditional creates with the same criteria, and the connections they hold.

A unit of work never waits for a second connection (the search registries are
settled before it takes its first); waits for a conditional create's lock and
for a pooled connection are bounded and answered 503 with Retry-After; at most
three quarters of the pool wait for locks, so requests that take none keep
being answered; `hub serve` stops promptly on SIGTERM in the middle of a
burst; and it refuses to start when PostgreSQL cannot hold its connections.
Timeouts here only detect hangs: the figures are in bench/contention.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from click.testing import CliRunner
from conftest import MIGRATIONS, TABLES
from fastapi.testclient import TestClient
from live_server import free_port
from sqlalchemy import event

from hub.api import create_app
from hub.cli import main
from hub.interactions.context import Context, Request
from hub.interactions.routes import dispatch
from hub.interactions.writes import create_lock_name
from hub.parameters.stored import RegistryHolder
from hub.settings import Settings, get_settings
from hub.store import SqlRepository
from hub.store.capacity import Capacity, TooFewConnections, judge
from hub.store.reader import conninfo
from hub.store.sql import lock_id

BASE = "http://hub.test/fhir"
HANG = 30.0  # seconds: longer than any bounded wait here, so only a hang reaches it


def patient(uid: str, i: int = 0) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:mrn", "value": uid}],
        "name": [{"family": f"Burst{i}"}],
    }


def criteria(uid: str) -> str:
    return f"identifier=urn:mrn|{uid}"


def lock_key(uid: str) -> str:
    return create_lock_name("Patient", criteria(uid))


# --- one connection at a time ----------------------------------------------------------------


def _requests(uid: str) -> dict[str, Request]:
    create = Request(
        method="POST",
        base_url=BASE,
        resource_type="Patient",
        body=patient(uid),
        if_none_exist=criteria(uid),
    )
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": patient(uid),
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": criteria(uid)},
            }
        ],
    }
    return {
        "create": create,
        "transaction": Request(method="POST", base_url=BASE, body=bundle),
        "search": Request(
            method="GET",
            base_url=BASE,
            resource_type="Patient",
            params=[("identifier", f"urn:mrn|{uid}")],
        ),
    }


@pytest.mark.parametrize("kind", ["create", "transaction", "search"])
def test_a_unit_of_work_holds_one_connection_at_a_time(
    repo: SqlRepository, settings: Settings, uid: str, kind: str
) -> None:
    # Registries that look at the store on every use: were they looked at inside a unit, it
    # would take a second connection while holding the first (and maybe the create's lock).
    ctx = Context(repo=repo, registries=RegistryHolder(repo, refresh_seconds=0), settings=settings)
    out = {"now": 0, "most": 0}

    def checkout(*_: Any) -> None:
        out["now"] += 1
        out["most"] = max(out["most"], out["now"])

    def checkin(*_: Any) -> None:
        out["now"] -= 1

    pool = repo.engine.pool
    event.listen(pool, "checkout", checkout)
    event.listen(pool, "checkin", checkin)
    try:
        result = dispatch(ctx, _requests(uid)[kind])
    finally:
        event.remove(pool, "checkout", checkout)
        event.remove(pool, "checkin", checkin)
    assert result.status in (200, 201)
    assert out["most"] == 1


# --- bounded waits, in process (PostgreSQL) --------------------------------------------------


@pytest.fixture()
def small_hub(postgres_url: str) -> Callable[..., TestClient]:
    """A hub of its own on PostgreSQL with a pool of 4 (and so 4 request threads)."""
    with psycopg.connect(conninfo(postgres_url), autocommit=True) as conn:
        for table in TABLES:
            conn.execute(f"DELETE FROM {table}")

    def make(**options: Any) -> TestClient:
        settings = Settings(
            database_url=postgres_url,
            public_base_url=BASE,
            db_pool_size=4,
            **options,
        )
        return TestClient(create_app(settings), raise_server_exceptions=False)

    return make


class Held:
    """A transaction on a connection of its own holding a conditional create's lock."""

    def __init__(self, postgres_url: str, key: str) -> None:
        self.conn = psycopg.connect(conninfo(postgres_url))
        self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_id(key),))

    def waiting(self) -> int:
        """Sessions waiting for an advisory lock of this database now."""
        with psycopg.connect(self.conn.info.dsn, autocommit=True) as other:
            row = other.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ).fetchone()
        return int(row[0]) if row else 0

    def release(self) -> None:
        if not self.conn.closed:
            self.conn.rollback()
            self.conn.close()

    def __enter__(self) -> Held:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()  # before the client closes: that waits for the requests in flight


def _in_threads(
    n: int, work: Callable[[int], httpx.Response]
) -> tuple[list[threading.Thread], list[Any]]:
    """Run `work(i)` in n threads; their results (or exceptions) appear as they finish."""
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        try:
            results[i] = work(i)
        except BaseException as e:  # kept for the assertion
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    return threads, results


def _join(threads: list[threading.Thread]) -> None:
    """Wait for the threads, together at most HANG seconds; fail when one is still running."""
    deadline = time.monotonic() + HANG
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a request was not answered"


def _answered(client: TestClient, path: str) -> int:
    """The status of GET `path`; fails when no answer comes (the request is left behind)."""
    threads, out = _in_threads(1, lambda _: client.get(path))
    _join(threads)
    assert isinstance(out[0], httpx.Response), f"GET {path} was not answered: {out[0]}"
    return out[0].status_code


def _busy(r: Any) -> None:
    assert isinstance(r, httpx.Response), r
    assert r.status_code == 503, r.text
    assert r.headers["Retry-After"].isdigit()
    assert r.json()["issue"][0]["code"] == "transient"


def test_a_lock_wait_ends_in_503_with_retry_after(
    small_hub: Callable[..., TestClient], postgres_url: str, uid: str
) -> None:
    with (
        small_hub(db_lock_timeout_seconds=0.5) as client,
        Held(postgres_url, lock_key(uid)),
    ):
        # The first waits for the lock, the others for their turn: each at most 0.5 s.
        threads, out = _in_threads(
            3,
            lambda _: client.post(
                "/fhir/Patient", json=patient(uid), headers={"If-None-Exist": criteria(uid)}
            ),
        )
        _join(threads)
        for r in out:
            _busy(r)


def test_criteria_spelled_differently_share_one_lock(
    small_hub: Callable[..., TestClient], postgres_url: str, uid: str
) -> None:
    """`urn:mrn|x` encoded, or with its parameters in another order, is the same condition."""
    assert lock_key(uid) == create_lock_name("Patient", f"identifier=urn%3Amrn%7C{uid}")
    assert create_lock_name("Patient", f"_id=1&{criteria(uid)}") == create_lock_name(
        "Patient", f"{criteria(uid)}&_id=1"
    )
    with (
        small_hub(db_lock_timeout_seconds=0.5) as client,
        Held(postgres_url, lock_key(uid)),
    ):
        r = client.post(
            "/fhir/Patient",
            json=patient(uid),
            headers={"If-None-Exist": f"identifier=urn%3Amrn%7C{uid}"},
        )
        _busy(r)  # it waited for the create holding the lock, instead of creating beside it


def _bundle(uid: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": patient(uid),
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": criteria(uid)},
            }
        ],
    }


def test_same_criteria_creates_take_turns_and_others_go_on(
    small_hub: Callable[..., TestClient], postgres_url: str, uid: str
) -> None:
    with (
        small_hub(db_lock_timeout_seconds=HANG) as client,
        Held(postgres_url, lock_key(uid)) as held,
    ):
        client.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "other"})
        threads, out = _in_threads(
            6,
            lambda i: client.post(
                "/fhir/Patient", json=patient(uid, i), headers={"If-None-Exist": criteria(uid)}
            ),
        )
        deadline = time.monotonic() + HANG
        while held.waiting() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        # One of them waits for the lock with a connection; the others wait their turn
        # holding none, and every other request is answered meanwhile.
        for path in ("/fhir/metadata", "/fhir/Patient?gender=other", "/fhir/Observation"):
            assert _answered(client, path) == 200
        assert held.waiting() == 1
        assert out == [None] * 6
        held.release()
        _join(threads)
        assert Counter(r.status_code for r in out) == {201: 1, 200: 5}
        found = client.get("/fhir/Patient", params={"identifier": f"urn:mrn|{uid}"}).json()
        assert found["total"] == 1


def test_lock_waiters_leave_a_quarter_of_the_pool_to_other_requests(
    small_hub: Callable[..., TestClient], postgres_url: str, uid: str
) -> None:
    # Transaction Bundles do not take turns: their conditional creates wait in the store.
    with (
        small_hub(db_lock_timeout_seconds=HANG) as client,
        Held(postgres_url, lock_key(uid)) as held,
    ):
        client.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "other"})
        threads, out = _in_threads(6, lambda _: client.post("/fhir", json=_bundle(uid)))
        deadline = time.monotonic() + HANG
        while held.waiting() < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        # Three of the four connections wait for the lock; the fourth answers the rest.
        for path in ("/fhir/metadata", "/fhir/Patient?gender=other", "/fhir/Observation"):
            assert _answered(client, path) == 200
        assert held.waiting() == 3
        busy = [r for r in out if r is not None]
        assert len(busy) == 3
        for r in busy:
            _busy(r)
        held.release()
        _join(threads)
        assert Counter(r.status_code for r in out) == {503: 3, 200: 3}
        entries = Counter(
            r.json()["entry"][0]["response"]["status"] for r in out if r.status_code == 200
        )
        assert entries == {"201 Created": 1, "200 OK": 2}


def test_no_pooled_connection_in_time_is_503(small_hub: Callable[..., TestClient]) -> None:
    with small_hub(db_pool_timeout_seconds=0.5) as client:
        repo = client.app.state.context.repo  # type: ignore[attr-defined]
        taken = [repo.engine.connect() for _ in range(4)]
        try:
            _busy(client.get("/fhir/Patient?gender=other"))
        finally:
            for conn in taken:
                conn.close()
        assert client.get("/fhir/Patient?gender=other").status_code == 200


# --- a real `hub serve` under a burst (PostgreSQL) -------------------------------------------


@pytest.fixture()
def serve(postgres_url: str, tmp_path: Path) -> Iterator[Callable[..., tuple[Any, str]]]:
    """Start `hub serve` with a pool of 4 and registries checked on every use."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(workers: int = 1) -> tuple[subprocess.Popen[bytes], str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
        env |= {
            "HUB_DB_POOL_SIZE": "4",
            "HUB_REGISTRY_REFRESH_SECONDS": "0",
            "HUB_MIGRATIONS_DIR": str(MIGRATIONS),
            "HUB_LOG_LEVEL": "warning",
            "HUB_MLLP_ENABLED": "false",  # port 2575 is not the test's to take
        }
        port = free_port()
        argv = [sys.executable, "-m", "hub.cli", "serve", "--port", str(port)]
        argv += ["--workers", str(workers), "--database-url", postgres_url]
        log = (tmp_path / f"serve-{port}.log").open("wb")
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        root = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{root}/healthz", timeout=1).status_code == 200:
                    return proc, root
            except httpx.HTTPError:
                time.sleep(0.2)
        pytest.fail(f"hub serve did not start: {(tmp_path / f'serve-{port}.log').read_text()}")

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


class Burst:
    """Clients sending the same conditional create, and one sending unrelated requests."""

    def __init__(self, root: str, uid: str, clients: int) -> None:
        self.root, self.uid = root, uid
        self.stop = threading.Event()
        self.creates: list[Any] = []
        self.others: list[Any] = []
        self.threads = [threading.Thread(target=self._create, daemon=True) for _ in range(clients)]
        self.threads.append(threading.Thread(target=self._other, daemon=True))
        for t in self.threads:
            t.start()

    def _create(self) -> None:
        with httpx.Client(base_url=self.root, timeout=HANG) as http:
            while not self.stop.is_set():
                try:
                    r = http.post(
                        "/fhir/Patient",
                        json=patient(self.uid),
                        headers={"If-None-Exist": criteria(self.uid)},
                    )
                    self.creates.append((r.status_code, r.headers.get("Retry-After")))
                except httpx.HTTPError as e:
                    self.creates.append(e)
                    return

    def _other(self) -> None:
        with httpx.Client(base_url=self.root, timeout=HANG) as http:
            while not self.stop.is_set():
                for path in ("/fhir/metadata", "/fhir/Patient?gender=other"):
                    try:
                        self.others.append(http.get(path).status_code)
                    except httpx.HTTPError as e:
                        self.others.append(e)
                        return

    def until(self, creates: int, others: int) -> None:
        """Go on until the burst has had this many answers of each kind (a loaded machine
        takes longer to get there, never to a different answer), within HANG."""
        deadline = time.monotonic() + HANG
        while len(self.creates) < creates or len(self.others) < others:
            if time.monotonic() > deadline:
                break  # the assertions then say what was missing
            time.sleep(0.05)

    def end(self) -> None:
        self.stop.set()
        _join(self.threads)  # each client's request in flight ends within its timeout


def test_a_burst_of_conditional_creates_stores_one_and_stalls_nothing(
    serve: Callable[..., tuple[Any, str]], uid: str
) -> None:
    _, root = serve()
    burst = Burst(root, uid, clients=24)
    # Unrelated requests answered while two rounds of creates are in: nothing stalled.
    burst.until(creates=48, others=6)
    burst.end()
    assert len(burst.creates) >= 48 and len(burst.others) >= 6, (burst.creates, burst.others)
    for answer in burst.creates:
        assert isinstance(answer, tuple), answer
        status, retry_after = answer
        assert status in (200, 201) or (status == 503 and retry_after), answer
    assert Counter(s for s, _ in burst.creates)[201] == 1
    assert set(burst.others) == {200}, Counter(map(str, burst.others))
    found = httpx.get(f"{root}/fhir/Patient", params={"identifier": f"urn:mrn|{uid}"}).json()
    assert found["total"] == 1


def test_sigterm_during_a_burst_stops_the_server(
    serve: Callable[..., tuple[Any, str]], uid: str
) -> None:
    proc, root = serve(workers=2)
    burst = Burst(root, uid, clients=24)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(HANG)
    except subprocess.TimeoutExpired:
        pytest.fail("hub serve was still running long after SIGTERM")
    finally:
        burst.stop.set()
    burst.end()


# --- connection limits at start-up -----------------------------------------------------------


def test_judge_names_the_settings_when_the_connections_cannot_fit() -> None:
    stock = Capacity(max_connections=100, reserved=3, in_use=0)
    assert judge(stock, 2, 20, 2) is None
    with pytest.raises(TooFewConnections) as e:
        judge(stock, 2, 48, 2)  # 100 connections: more than the 97 a client may open
    for name in ("HUB_DB_POOL_SIZE", "HUB_DB_READ_CONNECTIONS", "max_connections", "100"):
        assert name in str(e.value)
    busy = Capacity(max_connections=100, reserved=3, in_use=60)
    warning = judge(busy, 2, 20, 2)
    assert warning is not None and "37 of the server's 97 are free" in warning


def test_serve_refuses_a_pool_postgresql_cannot_hold(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUB_DATABASE_URL", postgres_url)
    monkeypatch.setenv("HUB_DB_POOL_SIZE", "100000")
    try:
        result = CliRunner().invoke(main, ["serve", "--port", str(free_port())])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1, result.output
    assert "HUB_DB_POOL_SIZE 100000" in result.output
    assert "max_connections" in result.output
