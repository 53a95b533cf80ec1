"""HL7 v2 end to end: python-hl7's real MLLP client sends, fhirpy's real FHIR client finds.

1. `hub serve` as `make run` starts it (`hub db upgrade`, then `hub serve` on SQLite, the
   MLLP listener inside, embedded processing), on free ports.
2. `hub mllp` in its own process, a real `hub worker` (Celery) and `hub beat` on
   PostgreSQL, a redis-server of the test's own, and `hub serve --no-mllp` for the
   searches (the fixture of tests/test_ingest_celery.py).
3. The same, with the worker killed (SIGKILL) while senders are still sending: every
   acknowledged message ends done once, after a new worker starts.

Every ACK is checked as the sender sees it: MSA-1 as the message's mode asks (original:
AA; enhanced: CA as MSH-15 asks, then the application ACK as MSH-16 asks), MSA-2 the
message's MSH-10. The resources are then searched for through HTTP, waiting (bounded)
for processing.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hl7
import hl7.client
import pytest
from fhirpy import SyncFHIRClient
from live_server import free_port, wait_ready
from sqlalchemy import func, select
from test_ingest_celery import DEADLINE, Hub, hub  # noqa: F401  (the fixture)

from hub.ingest.messages import DONE, PROCESSING
from hub.store.schema import lineage, messages, resource_history, resources

HUB = str(Path(sys.executable).with_name("hub"))
SAMPLES = Path(__file__).parent / "data" / "hl7v2"
IG = sorted(SAMPLES.glob("ig-*.hl7"))
START, END = b"\x0b", b"\x1c\r"
SYSTEM = "urn:oid:1.2.3.99"  # the assigning authority of the written messages' MRNs
WAIT = 60.0  # seconds for what was acknowledged to become searchable


# ---- messages ---------------------------------------------------------------------------


def _msh(event: str, control_id: str, modes: str = "") -> str:
    return (
        f"MSH|^~\\&|E2EApp|E2EFac|HUB|HUBFAC|20240102030405+0100||{event}|{control_id}|P|2.5.1"
        f"|||{modes}\r"
    )


def _pid(mrn: str, family: str) -> str:
    return f"PID|1||{mrn}^^^E2E&1.2.3.99&ISO^MR||{family}^Jane||19800101|F\r"


def adt(event: str, mrn: str, control_id: str, family: str = "Doe") -> bytes:
    trigger = event.split("^")[1]
    return (
        _msh(event, control_id)
        + f"EVN|{trigger}|20240102030405\r"
        + _pid(mrn, family)
        + f"PV1|1|I|||||||||||||||||V{mrn}^^^E2E&1.2.3.99&ISO^VN\r"
    ).encode()


def oru(mrn: str, control_id: str, family: str = "Doe") -> bytes:
    return (
        _msh("ORU^R01^ORU_R01", control_id)
        + _pid(mrn, family)
        + f"OBR|1|P{mrn}|F{mrn}|24331-1^Lipid panel^LN|||20240102030000+0100\r"
        + "OBX|1|NM|2093-3^Cholesterol^LN||196|mg/dL^^UCUM|||||F|||20240102030000+0100\r"
        + "OBX|2|NM|2571-8^Triglyceride^LN||90|mg/dL^^UCUM|||||F|||20240102030000+0100\r"
    ).encode()


def field(raw: bytes, segment: str, number: int) -> str:
    """A field of the first such segment, MSH counted as HL7 does (MSH-1 the separator)."""
    for line in raw.split(b"\r"):
        if line.startswith(segment.encode() + b"|"):
            parts = line.decode("latin-1").split("|")
            index = number - 1 if segment == "MSH" else number
            return parts[index] if index < len(parts) else ""
    return ""


def expected_acks(raw: bytes) -> list[str]:
    """The MSA-1 codes a successful message gets, in order (HL7 v2 chapter 2.9)."""
    accept, application = field(raw, "MSH", 15), field(raw, "MSH", 16)
    if not accept and not application:
        return ["AA"]
    codes = ["CA"] if accept in ("", "AL", "SU") else []
    return codes + (["AA"] if application in ("AL", "SU") else [])


# ---- MLLP with python-hl7's client ------------------------------------------------------


class Sender:
    """python-hl7's MLLPClient, plus reading the frames its one `recv` did not return
    (an application ACK comes later, on the same connection)."""

    def __init__(self, port: int) -> None:
        self.client = hl7.client.MLLPClient("127.0.0.1", port)
        self.client.socket.settimeout(30)
        self.pending = b""

    def close(self) -> None:
        self.client.close()

    def _frames(self) -> list[bytes]:
        found = []
        while END in self.pending:
            frame, _, self.pending = self.pending.partition(END)
            found.append(frame[frame.index(START) + 1 :])
        return found

    def exchange(self, raw: bytes) -> list[bytes]:
        """Send one message; every ACK it is owed, each checked against its MSH-10."""
        want = expected_acks(raw)
        self.pending += self.client.send_message(raw)
        acks = self._frames()
        while len(acks) < len(want):
            chunk = self.client.socket.recv(65536)
            assert chunk, f"the connection closed before the ACKs of {field(raw, 'MSH', 10)}"
            self.pending += chunk
            acks += self._frames()
        got = [msa(a) for a in acks]
        control_id = field(raw, "MSH", 10)
        assert got == [[code, control_id] for code in want], (got, acks)
        return acks


def msa(ack: bytes) -> list[str]:
    segment = hl7.parse(ack.decode("latin-1")).segment("MSA")
    return [str(segment[1]), str(segment[2])]


# ---- FHIR with fhirpy -------------------------------------------------------------------


def eventually(check: Callable[[], Any], what: str, trouble: Callable[[], str | None]) -> Any:
    """`check()` once it returns something true, within WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while True:
        problem = trouble()
        assert problem is None, problem
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what}: not searchable within {WAIT:.0f} s"
        time.sleep(0.2)


def search(fhir: SyncFHIRClient, resource_type: str, **params: str) -> list[Any]:
    return list(fhir.resources(resource_type).search(**params).fetch_all())


def patient_of(fhir: SyncFHIRClient, system: str, value: str, trouble: Any) -> Any:
    def find() -> Any:
        found = search(fhir, "Patient", identifier=f"{system}|{value}")
        assert len(found) <= 1, found
        return found[0] if found else None

    return eventually(find, f"Patient {system}|{value}", trouble)


def send_and_find(mllp_port: int, base: str, trouble: Callable[[], str | None]) -> None:
    """The IG samples and written ADT A01, A08 and ORU R01: acknowledged, then searchable."""
    mrn = f"E2E{uuid.uuid4().hex[:8]}"
    written = [
        adt("ADT^A01^ADT_A01", mrn, f"{mrn}-1"),
        adt("ADT^A08^ADT_A01", mrn, f"{mrn}-2", family="Updated"),
        oru(mrn, f"{mrn}-3", family="Updated"),  # its PID is the patient's latest too
    ]
    sender = Sender(mllp_port)
    try:
        for raw in [path.read_bytes() for path in IG] + written:
            sender.exchange(raw)
    finally:
        sender.close()

    fhir = SyncFHIRClient(base)
    # The IG's ADT_A01: its patient (PID-3 of V2FHIR, 1.2.3.4.5), visit and allergy.
    eve = patient_of(fhir, "urn:oid:1.2.3.4.5", "1032702", trouble)
    assert eve["name"][0]["family"] == "Everywoman"
    encounters = eventually(
        lambda: search(fhir, "Encounter", subject=f"Patient/{eve['id']}"), "IG encounter", trouble
    )
    assert encounters[0]["identifier"][0]["value"] == "81456267"
    # The IG's ORU_R01: three results for its patient (OrdOrg 3.4.5.6.7).
    lab = patient_of(fhir, "urn:oid:3.4.5.6.7", "1032702", trouble)
    results = eventually(
        lambda: len(search(fhir, "Observation", patient=lab["id"])) == 3 or None,
        "IG ORU results",
        trouble,
    )
    assert results
    report = search(fhir, "DiagnosticReport", patient=lab["id"])
    assert [r["identifier"][0]["value"] for r in report] == ["LAB4432"]
    # The written messages: one Patient updated by A08, its Encounter, two results.
    mine = eventually(
        lambda: next(
            (
                p
                for p in search(fhir, "Patient", identifier=f"{SYSTEM}|{mrn}")
                if p["name"][0]["family"] == "Updated"
            ),
            None,
        ),
        "the A08's update",
        trouble,
    )
    assert len(search(fhir, "Patient", identifier=f"{SYSTEM}|{mrn}")) == 1
    assert mine["meta"]["versionId"] == "2"  # the ORU's PID changed nothing: no version
    visits = search(fhir, "Encounter", subject=f"Patient/{mine['id']}")
    assert [v["identifier"][0]["value"] for v in visits] == [f"V{mrn}"]
    values = eventually(
        lambda: sorted(
            o["valueQuantity"]["value"] for o in search(fhir, "Observation", patient=mine["id"])
        ),
        "the ORU's results",
        trouble,
    )
    assert values == [90, 196]
    # One Provenance per message, each naming what it wrote.
    provenances = eventually(
        lambda: len(search(fhir, "Provenance", target=f"Patient/{mine['id']}")) == 3 or None,
        "three Provenances of the patient",
        trouble,
    )
    assert provenances


# ---- processes --------------------------------------------------------------------------


def _wait_port(port: int, trouble: Callable[[], str | None], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        problem = trouble()
        assert problem is None, problem
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listened on {port} within {timeout} s"
            time.sleep(0.2)


def _migrated(tmp_path: Path) -> tuple[dict[str, str], int, int]:
    """`make run`'s first step, `hub db upgrade`, on a SQLite file of the test's own: the
    environment for `hub serve` (no HUB_* of the caller's), its MLLP and HTTP ports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    mllp_port, http_port = free_port(), free_port()
    env.update(
        HUB_DATABASE_URL=f"sqlite:///{tmp_path / 'hub.db'}",
        HUB_PORT=str(http_port),
        HUB_MLLP_PORT=str(mllp_port),
        HUB_LOG_LEVEL="warning",
        PYTHONUNBUFFERED="1",
    )
    upgrade = subprocess.run(
        [HUB, "db", "upgrade"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert upgrade.returncode == 0, upgrade.stderr
    return env, mllp_port, http_port


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[int, str, Callable[[], str | None]]]:
    """`make run`'s two steps, `hub db upgrade` then `hub serve`, on free ports."""
    env, mllp_port, http_port = _migrated(tmp_path)
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [HUB, "serve"], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT
        )

    def trouble() -> str | None:
        if process.poll() is None:
            return None
        return f"hub serve ended ({process.returncode}):\n" + log_path.read_text(errors="replace")

    try:
        root = f"http://127.0.0.1:{http_port}"
        wait_ready(root, trouble)
        _wait_port(mllp_port, trouble)
        yield mllp_port, f"{root}/fhir", trouble
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.mark.e2e
def test_make_run_receives_over_mllp_and_serves_the_resources_through_fhir(
    served: tuple[int, str, Callable[[], str | None]],
) -> None:
    mllp_port, base, trouble = served
    send_and_find(mllp_port, base, trouble)


def _ended(cluster: Hub) -> str | None:
    ended = [p for p in cluster.processes if p.popen.poll() is not None]
    return "\n".join(p.tail() for p in ended) or None


def _listen_and_serve(cluster: Hub) -> tuple[int, str]:
    """`hub mllp` and an API that never processes (the broker is set), on free ports."""
    mllp_port, http_port = free_port(), free_port()
    cluster.env["HUB_MLLP_PORT"] = str(mllp_port)
    cluster.start("mllp", ["mllp"])
    cluster.start("api", ["serve", "--no-mllp", "--port", str(http_port)])
    root = f"http://127.0.0.1:{http_port}"
    wait_ready(root, lambda: _ended(cluster))
    _wait_port(mllp_port, lambda: _ended(cluster))
    return mllp_port, f"{root}/fhir"


@pytest.mark.celery
@pytest.mark.postgres
def test_hub_mllp_with_celery_workers_on_postgresql(hub: Hub) -> None:  # noqa: F811
    hub.start("beat", ["beat", "--loglevel", "info"])
    hub.start("worker", ["worker", "--concurrency", "2", "--loglevel", "info"])
    mllp_port, base = _listen_and_serve(hub)
    send_and_find(mllp_port, base, lambda: _ended(hub))
    counts = hub.wait(lambda c: set(c) == {DONE}, DEADLINE, "every message to be done")
    assert counts == {DONE: len(IG) + 3}


KILLED = int(os.environ.get("HUB_TEST_MLLP_KILL_MESSAGES", "400"))
SENDERS = 4
WARM = 20


def _stream(
    port: int, ids: list[str], acked: list[str], errors: list[BaseException], pause: float
) -> None:
    """SENDERS connections sending ADT^A01 of distinct patients (`ids`), `pause` seconds
    between a sender's messages."""

    def send(i: int) -> None:
        sender = Sender(port)
        try:
            for control_id in ids[i::SENDERS]:
                sender.exchange(adt("ADT^A01^ADT_A01", control_id, control_id))
                acked.append(control_id)
                time.sleep(pause)
        except BaseException as e:  # reported by the test
            errors.append(e)
        finally:
            sender.close()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(SENDERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)


@pytest.mark.celery
@pytest.mark.postgres
def test_a_worker_killed_mid_stream_loses_no_acknowledged_message(hub: Hub) -> None:  # noqa: F811
    hub.start("beat", ["beat", "--loglevel", "info"])
    worker = hub.start_worker()
    mllp_port, _ = _listen_and_serve(hub)
    tag = f"K{uuid.uuid4().hex[:6]}"
    ids = [f"{tag}-{n:05d}" for n in range(KILLED)]
    acked: list[str] = []
    errors: list[BaseException] = []
    # A first few, until the worker is up and processing; then a stream of a few seconds.
    _stream(mllp_port, ids[:WARM], acked, errors, 0)
    hub.wait(lambda c: c.get(DONE, 0) == WARM, DEADLINE, "the worker to process")
    stream = threading.Thread(target=_stream, args=(mllp_port, ids[WARM:], acked, errors, 0.05))
    stream.start()
    try:
        hub.wait(lambda c: c.get(DONE, 0) >= WARM + 30, DEADLINE, "the stream to be processed")
        worker.kill()
        sent_at_kill = len(acked)
        with hub.engine.connect() as conn:
            in_flight = [
                r[0]
                for r in conn.execute(select(messages.c.id).where(messages.c.status == PROCESSING))
            ]
        time.sleep(1)
        hub.start_worker()
    finally:
        stream.join(180)
    assert not errors, errors
    assert sent_at_kill < KILLED, "every message was sent before the worker was killed"
    assert sorted(acked) == ids

    counts = hub.wait(lambda c: c.get(DONE, 0) == KILLED, DEADLINE, "every message to be done")
    assert counts == {DONE: KILLED}

    def count(table: Any, resource_type: str) -> int:
        stmt = select(func.count()).select_from(table).where(table.c.res_type == resource_type)
        return int(hub.scalar(stmt))

    # One Patient and one Encounter per message (distinct patients), each written once; one
    # Provenance per message.
    for kind in ("Patient", "Encounter", "Provenance"):
        assert count(resources, kind) == KILLED, kind
        assert count(resource_history, kind) == KILLED, kind
    per_message = (
        select(lineage.c.message_id, lineage.c.element, func.count().label("n"))
        .group_by(lineage.c.message_id, lineage.c.element, lineage.c.source_field)
        .subquery()
    )
    assert hub.scalar(select(func.max(per_message.c.n))) == 1
    assert hub.scalar(select(func.count(func.distinct(lineage.c.message_id)))) == KILLED
    if in_flight:  # what the killed worker held was finished on a later attempt
        with hub.engine.connect() as conn:
            attempts = conn.execute(
                select(messages.c.attempts).where(messages.c.id.in_(in_flight))
            ).scalars()
            assert min(attempts) >= 2


def _tcp(port: int) -> list[tuple[int, str, str]]:
    """(remote port, state, socket inode) of the IPv4 sockets on local `port`."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[1].split(":")[1], 16) == port:
            found.append((int(f[2].split(":")[1], 16), f[3], f[9]))
    return found


def _socket_owners(pgid: int) -> dict[str, int]:
    """Socket inode -> pid, over the processes of a process group."""
    owners = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pgid:
                continue
            for fd in (entry / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    owners[target[8:-1]] = int(entry.name)
        except OSError:  # a process or descriptor that went away
            continue
    return owners


@pytest.mark.e2e
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc")
def test_hub_serve_with_two_workers_acks_from_both_processes(tmp_path: Path) -> None:
    """`hub serve --workers 2`: each uvicorn worker listens on the MLLP port (SO_REUSEPORT),
    the kernel spreads connections between them, and both acknowledge."""
    env, mllp_port, _ = _migrated(tmp_path)
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [HUB, "serve", "--workers", "2"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    senders: list[Sender] = []
    try:
        deadline = time.monotonic() + 90
        while len([s for s in _tcp(mllp_port) if s[1] == "0A"]) < 2:  # 0A: LISTEN
            assert process.poll() is None, log_path.read_text(errors="replace")
            assert time.monotonic() < deadline, "two listeners were not up within 90 s"
            time.sleep(0.2)
        senders = [Sender(mllp_port) for _ in range(24)]
        for i, sender in enumerate(senders):
            sender.exchange(adt("ADT^A01^ADT_A01", f"W2-{i}", f"W2-{i}"))
        mine = {s.client.socket.getsockname()[1] for s in senders}
        owners = _socket_owners(process.pid)
        serving = {owners.get(inode) for remote, _, inode in _tcp(mllp_port) if remote in mine}
        # 24 connections all hashed to one of two sockets: a chance of 2**-23.
        assert len(serving) == 2 and None not in serving, serving
        assert process.pid not in serving  # the workers answer, not the supervisor
    finally:
        for sender in senders:
            sender.close()
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
