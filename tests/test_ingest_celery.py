"""Feed ingestion with real Celery processes: a killed worker, a restarted broker.

PostgreSQL, a real Redis server of the test's own (started on a free port, so
that the machine's Redis is never touched) and real `hub worker` and `hub beat`
processes. A CSV file of 1500 rows (more with
HUB_TEST_CELERY_ROWS) is ingested with `hub ingest --no-wait`; mid-file the
worker is killed with SIGKILL and started again, or Redis is shut down without
saving (every queued task is lost) and started again. The beat's sweeper must
send again whatever was lost, and in the end every row is `done`, once: one
resource per key, no extra versions, one Provenance and one set of lineage rows
per message.

The tests take a file lock, so that under xdist they never overlap: each keeps
two CPUs busy for half a minute. With CI=true a missing `redis-server` or an
unreachable PostgreSQL is a failure, not a skip.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import redis
from conftest import TABLES, require_server
from ingest_fixtures import (
    OBSERVATION_COLUMNS,
    PATIENT_COLUMNS,
    csv_bytes,
    observation_row,
    patient_row,
    rid,
)
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import Engine

from hub.ingest.messages import DONE, PENDING, PROCESSING
from hub.store.schema import lineage, messages, resource_history, resources

pytestmark = [pytest.mark.celery, pytest.mark.postgres]

# Rows of the file: enough to be mid-file for seconds on a 2-CPU machine, few enough for the
# two tests to stay under 90 s there (about 25 s each when idle); HUB_TEST_CELERY_ROWS for more.
ROWS = int(os.environ.get("HUB_TEST_CELERY_ROWS", "1500"))
CORRECTED = range(0, ROWS, 100)  # these patients get a second, corrected row at the end
HUB = str(Path(sys.executable).with_name("hub"))
REDIS_SERVER = shutil.which("redis-server")
LOCK = Path("/tmp/fhir-hub-celery-tests.lock")
# Seconds for a file to be processed: about 25 on an idle 2-CPU machine, several times that
# on a busy one; past it the test fails, with the message counts and the process logs.
DEADLINE = 180.0


class RedisServer:
    """A redis-server of the test's own, on a free port, without persistence.

    `restart()` stops it without saving (every queued task is lost) and starts it again
    on the same port, as a broker restart in production would.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.popen: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        args = ["--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.folder)]
        log = (self.folder / "redis.log").open("ab")
        self.popen = subprocess.Popen(
            [REDIS_SERVER, *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client().ping()
                return
            except redis.RedisError:
                assert self.popen.poll() is None, (self.folder / "redis.log").read_text()
                assert time.monotonic() < deadline, "Redis did not start within 10 s"
                time.sleep(0.05)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_connect_timeout=2)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=10)

    def restart(self) -> None:
        with contextlib.suppress(redis.RedisError):
            self.client().shutdown(nosave=True)
        assert self.popen is not None
        self.popen.wait(timeout=10)
        self.start()


def _redis_missing() -> str | None:
    if REDIS_SERVER is None:
        return "redis-server is not installed (the Celery tests start one of their own)"
    return None


class Process:
    """A `hub` subprocess in a session of its own (SIGKILL reaches its pool children too)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.log_path = logs / f"{name}.log"
        self.log: IO[bytes] = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            [HUB, *args], env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def kill(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)
        # Pool children may outlive the leader for a moment: the group must be gone.
        deadline = time.monotonic() + 10
        while _group_alive(self.popen.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.log.close()

    def signal(self, number: int) -> None:
        """Send a signal to the whole group (SIGSTOP pauses the pool children too)."""
        os.killpg(self.popen.pid, number)

    def tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return f"--- last lines of {self.name}.log ---\n" + "\n".join(text[-lines:])


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


class Hub:
    """The processes of one test and its view of the database."""

    def __init__(
        self, env: dict[str, str], logs: Path, engine: Engine, broker: RedisServer
    ) -> None:
        self.env, self.logs, self.engine, self.broker = env, logs, engine, broker
        self.processes: list[Process] = []
        self.worker: Process | None = None

    def start_worker(self) -> Process:
        self.worker = self.start("worker", ["worker", "--concurrency", "4", "--loglevel", "info"])
        return self.worker

    def start(self, name: str, args: list[str]) -> Process:
        process = Process(name, args, self.env, self.logs)
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in reversed(self.processes):
            process.kill()

    def ingest(self, file: Path, mapping: str = "synthea-patients") -> None:
        run = subprocess.run(
            [
                HUB,
                "ingest",
                "--adapter",
                "csv",
                "--mapping",
                mapping,
                "--no-wait",
                str(file),
            ],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, f"hub ingest failed:\n{run.stdout}\n{run.stderr}"

    def counts(self) -> dict[str, int]:
        stmt = select(messages.c.status, func.count()).group_by(messages.c.status)
        with self.engine.connect() as conn:
            return {r[0]: int(r[1]) for r in conn.execute(stmt)}

    def wait(
        self, condition: Callable[[dict[str, int]], bool], timeout: float, what: str
    ) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while True:
            counts = self.counts()
            if condition(counts):
                return counts
            if time.monotonic() > deadline:
                logs = "\n".join(p.tail() for p in self.processes)
                raise AssertionError(
                    f"timed out after {timeout:.0f} s waiting for {what}; messages: {counts}\n"
                    f"{logs}"
                )
            time.sleep(0.2)

    def scalar(self, stmt: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(stmt).scalar_one()


def take_lock(lock: IO[str], timeout: float = 600) -> None:
    """One of these tests at a time, across xdist workers and concurrent runs."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                pytest.fail(f"{LOCK} was held by another Celery test run for {timeout:.0f} s")
            time.sleep(0.5)


@pytest.fixture()
def hub(postgres_url: str, tmp_path: Path) -> Iterator[Hub]:
    require_server(_redis_missing())
    with LOCK.open("w") as lock:
        take_lock(lock)
        engine = create_engine(postgres_url)
        with engine.begin() as conn:
            for table in TABLES:
                conn.execute(text(f"DELETE FROM {table}"))
        broker = RedisServer(tmp_path)
        env = {
            **os.environ,
            "HUB_DATABASE_URL": postgres_url,
            "HUB_BROKER_URL": broker.url,
            "HUB_INGEST_STALE_SECONDS": "3",
            "HUB_INGEST_SWEEP_SECONDS": "1",
            "HUB_DB_POOL_SIZE": "2",
            "PYTHONUNBUFFERED": "1",
        }
        hub = Hub(env, tmp_path, engine, broker)
        try:
            yield hub
        finally:
            hub.close()
            broker.stop()
            engine.dispose()


@pytest.fixture()
def synthea_file(tmp_path: Path) -> Path:
    rows = [patient_row(f"celery-{i:05d}", FIRST=f"Given{i}") for i in range(ROWS)]
    rows += [patient_row(f"celery-{i:05d}", FIRST=f"Given{i}", LAST="Corrected") for i in CORRECTED]
    path = tmp_path / "patients.csv"
    path.write_bytes(csv_bytes(PATIENT_COLUMNS, rows))
    return path


MESSAGES = ROWS + len(CORRECTED)


def assert_every_row_done_once(hub: Hub) -> None:
    counts = hub.wait(lambda c: c.get(DONE, 0) == MESSAGES, DEADLINE, "every row to be done")
    assert counts == {DONE: MESSAGES}

    def count(table: Any, resource_type: str) -> int:
        return int(
            hub.scalar(
                select(func.count()).select_from(table).where(table.c.res_type == resource_type)
            )
        )

    # One Patient per key, one Provenance per message; versions: 2 for corrected patients.
    assert count(resources, "Patient") == ROWS
    assert count(resources, "Provenance") == MESSAGES
    assert count(resource_history, "Patient") == MESSAGES
    assert count(resource_history, "Provenance") == MESSAGES
    most = select(func.max(resources.c.version_id)).where(resources.c.res_type == "Patient")
    assert hub.scalar(most) == 2
    corrected = select(resources.c.res_id).where(
        resources.c.res_type == "Patient", resources.c.version_id == 2
    )
    with hub.engine.connect() as conn:
        twice = {r[0] for r in conn.execute(corrected)}
    assert twice == {rid("Patient", f"celery-{i:05d}") for i in CORRECTED}
    # Lineage: each message's rows recorded once (a second run would have doubled them).
    per_message = (
        select(
            lineage.c.message_id, lineage.c.element, lineage.c.source_field, func.count().label("n")
        )
        .group_by(lineage.c.message_id, lineage.c.element, lineage.c.source_field)
        .subquery()
    )
    assert hub.scalar(select(func.max(per_message.c.n))) == 1
    assert hub.scalar(select(func.count(func.distinct(lineage.c.message_id)))) == MESSAGES


def test_a_worker_killed_mid_file_loses_nothing_and_duplicates_nothing(
    hub: Hub, synthea_file: Path
) -> None:
    hub.start("beat", ["beat", "--loglevel", "info"])
    worker = hub.start_worker()
    hub.ingest(synthea_file)

    hub.wait(lambda c: c.get(DONE, 0) >= MESSAGES // 5, DEADLINE, "a fifth of the rows")
    worker.kill()
    counts = hub.counts()
    assert counts.get(DONE, 0) < MESSAGES, "the file was done before the worker was killed"
    with hub.engine.connect() as conn:
        in_flight = [
            r[0] for r in conn.execute(select(messages.c.id).where(messages.c.status == PROCESSING))
        ]
    time.sleep(1)
    hub.start_worker()

    assert_every_row_done_once(hub)
    # What the killed worker was doing was sent again (by the sweeper: the broker keeps an
    # unacknowledged task for an hour) and finished on a second attempt.
    if in_flight:
        with hub.engine.connect() as conn:
            attempts = [
                r[0]
                for r in conn.execute(
                    select(messages.c.attempts).where(messages.c.id.in_(in_flight))
                )
            ]
        assert min(attempts) >= 2, attempts


def test_a_redis_restart_mid_file_loses_nothing_and_duplicates_nothing(
    hub: Hub, synthea_file: Path
) -> None:
    hub.start("beat", ["beat", "--loglevel", "info"])
    worker = hub.start_worker()
    hub.ingest(synthea_file)

    hub.wait(lambda c: c.get(DONE, 0) >= MESSAGES // 5, DEADLINE, "a fifth of the rows")
    # The worker is paused while Redis restarts, so that the file is surely unfinished and
    # tasks queued when they are lost (a fast worker could otherwise finish first).
    worker.signal(signal.SIGSTOP)
    try:
        assert hub.counts().get(DONE, 0) < MESSAGES, "the file was done before Redis restarted"
        queued = hub.broker.client().llen("celery")
        assert queued > 0, "nothing was queued when Redis was restarted"
        hub.broker.restart()  # every queued task is lost: Redis runs without persistence
    finally:
        worker.signal(signal.SIGCONT)

    assert_every_row_done_once(hub)


def test_a_worker_sends_on_a_pending_message_once_its_reference_arrives(
    hub: Hub, tmp_path: Path
) -> None:
    """An observation whose patient has not arrived waits; the worker that writes the
    patient releases it and sends it on (no beat runs: no sweep looks at it again)."""
    hub.start_worker()
    observations = tmp_path / "observations.csv"
    observations.write_bytes(
        csv_bytes(OBSERVATION_COLUMNS, [observation_row("celery-late", ENCOUNTER="")])
    )
    hub.ingest(observations, "synthea-observations")
    hub.wait(lambda c: c == {PENDING: 1}, DEADLINE, "the observation to wait")
    patients = tmp_path / "patients.csv"
    patients.write_bytes(csv_bytes(PATIENT_COLUMNS, [patient_row("celery-late")]))
    hub.ingest(patients)
    hub.wait(lambda c: c == {DONE: 2}, DEADLINE, "both to be done")
    observation = select(resources.c.content).where(resources.c.res_type == "Observation")
    assert rid("Patient", "celery-late").encode() in bytes(hub.scalar(observation))


def test_celery_dispatcher_counts_the_tasks_waiting_in_the_broker(hub: Hub) -> None:
    """The sweeper's backlog: tasks sent and taken by no worker (none runs here); ids go
    `batch` to a task."""
    script = (
        "from hub.ingest.dispatch import CeleryDispatcher\n"
        "d = CeleryDispatcher(batch=2)\n"
        "before = d.backlog()\n"
        "d.submit([101, 102, 103])\n"
        "print(before, d.backlog())\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], env=hub.env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["0", "2"]  # [101, 102] and [103]


def test_beat_leaves_nothing_on_disk(hub: Hub, tmp_path: Path) -> None:
    """The sweeper's schedule lives in memory: no schedule file, no folder in TMPDIR."""
    temp, work = tmp_path / "tmp", tmp_path / "cwd"
    temp.mkdir()
    work.mkdir()
    hub.env["TMPDIR"] = str(temp)
    beat = subprocess.Popen(
        [HUB, "beat", "--loglevel", "info"],
        env=hub.env,
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not hub.broker.client().llen("hub.sweep"):  # the first sweep was sent
            assert beat.poll() is None, "hub beat exited"
            assert time.monotonic() < deadline, "hub beat sent no sweep within 60 s"
            time.sleep(0.1)
    finally:
        os.killpg(beat.pid, signal.SIGTERM)
        beat.wait(timeout=30)
    assert list(temp.iterdir()) == []
    assert list(work.iterdir()) == []
