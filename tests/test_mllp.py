"""The MLLP listener with python-hl7's real client, on SQLite and PostgreSQL: ACKs, the raw
bytes committed before them, duplicates, refusals, enhanced mode, many connections."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import hl7
import pytest

from adapters.hl7v2.header import parse_header
from hub.ingest.messages import FAILED, RECEIVED
from hub.ingest.service import IngestService
from hub.interactions.context import Context
from hub.settings import Settings
from tests.ingest_fixtures import HeldDispatcher, hold, wait_for
from tests.mllp_fixtures import SAMPLES, Served, adt, err, listening, msa, read_acks

IG = sorted(p.stem.removeprefix("ig-") for p in SAMPLES.glob("ig-*.hl7"))


@pytest.fixture()
def service(ctx: Context, settings: Settings) -> Iterator[IngestService]:
    s = IngestService(ctx, settings, dispatcher="inline")
    yield s
    s.close()


@pytest.fixture()
def held(service: IngestService) -> HeldDispatcher:
    return hold(service)


@pytest.fixture()
def served(service: IngestService, settings: Settings, held: HeldDispatcher) -> Iterator[Served]:
    with listening(service, settings) as s:
        yield s


def test_ig_samples_are_acknowledged_and_stored_raw(
    served: Served, service: IngestService, held: HeldDispatcher
) -> None:
    # VXU_V04 asks for an accept ACK only on error (MSH-15 ER): it gets none.
    asked = [name for name in IG if name != "VXU_V04"]
    with served.client() as client:
        acks = {n: client.send_message((SAMPLES / f"ig-{n}.hl7").read_bytes()) for n in asked}
    with served.socket() as sock:
        sock.sendall(b"\x0b" + (SAMPLES / "ig-VXU_V04.hl7").read_bytes() + b"\x1c\r")
        sock.sendall(b"\x0b" + adt("after-vxu") + b"\x1c\r")
        (only,) = read_acks(sock, 1)
    assert msa(only)[:2] == ["AA", "after-vxu"]
    for name, ack in acks.items():
        raw = (SAMPLES / f"ig-{name}.hl7").read_bytes()
        header = parse_header(raw)
        # Enhanced mode (MSH-15/16 valued in every IG sample except MDM_T02): CA, else AA.
        expected = "CA" if header.accept_ack or header.application_ack else "AA"
        assert msa(ack)[:2] == [expected, header.control_id], name
        ack_msh = hl7.parse(ack.decode("latin-1")).segment("MSH")
        assert str(ack_msh[3]) == header.receiving_application
        assert str(ack_msh[5]) == header.sending_application
        assert str(ack_msh[9]) == f"ACK^{header.trigger}^ACK"
    stored = [
        m
        for m in service.store.find(limit=20)
        if m.source != "SndApp/SndFac" or not m.external_id.endswith("|after-vxu")
    ]
    wait_for(lambda: len(held.submitted) == len(IG) + 1, 5, "the messages to be dispatched")
    assert len(stored) == len(IG)
    by_raw = {m.raw: m for m in stored}
    for name in IG:
        m = by_raw[(SAMPLES / f"ig-{name}.hl7").read_bytes()]  # the very bytes sent
        assert (m.adapter, m.mapping, m.status, m.content_type) == (
            "hl7v2",
            None,
            RECEIVED,
            "application/hl7-v2",
        )
        assert m.origin is not None and m.origin.startswith("mllp 127.0.0.1:")
    adt_a01 = by_raw[(SAMPLES / "ig-ADT_A01.hl7").read_bytes()]
    assert adt_a01.source == "SndApp/SndFac"
    assert adt_a01.external_id == "SndApp^1.2.3.4.5.2^ISO|SndFac^1.2.3.4.5.1^ISO|4637382"
    assert adt_a01.event_time is not None and adt_a01.event_time.isoformat() == (
        "2015-06-01T12:58:23+00:00"
    )
    mdm = by_raw[(SAMPLES / "ig-MDM_T02.hl7").read_bytes()]
    assert mdm.source == "HIE/REDDING HOSPITAL"


def test_many_connections_many_messages_committed_in_groups(
    served: Served, service: IngestService
) -> None:
    senders, each = 16, 25
    codes: list[list[str]] = [[] for _ in range(senders)]

    def send(i: int) -> None:
        with served.client() as client:
            for n in range(each):
                codes[i].append(msa(client.send_message(adt(f"C{i}-{n}")))[0])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(c == ["AA"] * each for c in codes)
    assert service.store.counts() == {RECEIVED: senders * each}
    groups = served.listener.receiver.commits.groups
    assert groups < senders * each  # messages of several connections shared commits
    # Each connection's messages were stored in the order it sent them.
    for i in range(senders):
        ids = [
            m.id
            for m in sorted(service.store.find(limit=1000), key=lambda m: m.id)
            if m.external_id.startswith(f"SndApp|SndFac|C{i}-")
        ]
        sent = [int(m.external_id.rsplit("-", 1)[1]) for m in service.store.get_many(ids)]
        assert sent == list(range(each))


def test_pipelined_frames_in_one_write_are_answered_in_order(served: Served) -> None:
    with served.socket() as sock:
        sock.sendall(b"".join(b"\x0b" + adt(f"P{n}") + b"\x1c\r" for n in range(10)))
        acks = read_acks(sock, 10)
    assert [msa(a)[:2] for a in acks] == [["AA", f"P{n}"] for n in range(10)]


def test_a_resend_is_acknowledged_again_without_reprocessing(
    served: Served, service: IngestService, held: HeldDispatcher
) -> None:
    with served.client() as client:
        first = msa(client.send_message(adt("D1")))
        again = msa(client.send_message(adt("D1")))
    assert first[:2] == again[:2] == ["AA", "D1"]
    assert len(service.store.find()) == 1
    wait_for(lambda: len(held.submitted) >= 1, 5, "the message to be dispatched")
    time.sleep(0.2)
    assert len(held.submitted) == 1  # handed to processing once


def test_same_control_id_with_other_bytes_is_stored_and_flagged(
    served: Served, service: IngestService
) -> None:
    with served.client() as client:
        client.send_message(adt("D2"))
        ack = client.send_message(adt("D2", extra="^Other"))
        resent = client.send_message(adt("D2", extra="^Other"))
    assert msa(ack)[0] == "AA"
    (warning,) = err(ack)
    assert "|205^" in warning and "|W|" in warning and "other content" in warning
    first, second = sorted(service.store.find(), key=lambda m: m.id)
    assert second.conflicts_with == first.id and first.conflicts_with is None
    assert second.summary()["conflictsWith"] == first.id
    assert b"Other" in second.raw
    assert msa(resent)[0] == "AA" and len(service.store.find()) == 2  # a resend of it


def test_unknown_type_is_rejected_with_the_reason_and_kept(
    served: Served, service: IngestService, held: HeldDispatcher
) -> None:
    with served.client() as client:
        ack = client.send_message(adt("U1", event="ZZZ^Z01"))
    assert msa(ack)[:2] == ["AR", "U1"]
    (e,) = err(ack)
    assert "200^Unsupported message type^HL70357" in e and "ZZZ\\S\\Z01" in e
    (m,) = service.store.find()
    assert m.status == FAILED and m.error == "MSH-9: no mapping for message type ZZZ^Z01"
    time.sleep(0.2)
    assert held.submitted == []


def test_missing_segment_is_an_application_error_naming_it(
    served: Served, service: IngestService
) -> None:
    message = adt("E1").replace(b"PID|1||E1^^^MRN^MR||Doe^Jane||19800101|F\r", b"")
    with served.client() as client:
        ack = client.send_message(message)
    assert msa(ack)[:2] == ["AE", "E1"]
    (e,) = err(ack)
    assert e.startswith("ERR||PID^1|100^Segment sequence error^HL70357|E|")
    assert service.store.find()[0].status == FAILED


def test_malformed_header_is_rejected_naming_the_field(
    served: Served, service: IngestService
) -> None:
    message = adt("M1").replace(b"|P|2.5.1", b"|P|")  # MSH-12 empty
    with served.client() as client:
        ack = client.send_message(message)
    assert msa(ack)[:2] == ["AR", "M1"]
    assert "MSH^1^12|101^Required field missing" in err(ack)[0]
    (m,) = service.store.find()
    assert (m.source, m.status, m.raw) == ("unidentified", FAILED, message)
    assert m.error == "MSH-12: the version id is missing"


def test_enhanced_mode_accept_acknowledgements_follow_msh15(served: Served) -> None:
    with served.socket() as sock:
        for control_id, msh15 in (("N1", "NE"), ("S1", "ER"), ("A1", "AL"), ("X1", "SU")):
            sock.sendall(b"\x0b" + adt(control_id, msh15=msh15, msh16="AL") + b"\x1c\r")
        # NE: never; ER: only on error (none here); AL and SU (success): a CA.
        acks = read_acks(sock, 2)
    assert [msa(a)[:2] for a in acks] == [["CA", "A1"], ["CA", "X1"]]
    with served.client() as client:
        ack = client.send_message(adt("R1", msh15="ER", event="ZZZ^Z01"))
    assert msa(ack)[:2] == ["CR", "R1"]


def test_application_ack_once_processed_as_msh16_asks(ctx: Context, settings: Settings) -> None:
    """Enhanced mode, MSH-16 AL: the CA at once, then, on the same connection, the
    application ACK (AA when the message was written, AE with the reason when it failed)."""
    service = IngestService(ctx, settings, dispatcher="threads")
    try:
        with listening(service, settings) as served, served.socket() as sock:
            sock.sendall(b"\x0b" + adt("APP1", msh15="AL", msh16="AL") + b"\x1c\r")
            sock.sendall(b"\x0b" + adt("APP2", msh15="AL", msh16="NE") + b"\x1c\r")
            accept1, accept2, application = read_acks(sock, 3)
            assert msa(accept1)[:2] == ["CA", "APP1"] and msa(accept2)[:2] == ["CA", "APP2"]
            (m,) = [m for m in service.store.find() if m.external_id.endswith("|APP1")]
            expected = "AA" if m.status == "done" else "AE"
            assert m.status in ("done", "failed", "dead")
            assert msa(application)[:2] == [expected, "APP1"]
            if expected == "AE":
                assert m.error is not None and m.error.split(":")[0] in err(application)[0]
            # The sender acknowledges our ACK: neither stored nor answered.
            ours = hl7.parse(application.decode()).segment("MSH")
            theirs = (
                "MSH|^~\\&|SndApp|SndFac|HUB|HUBFAC|20240101||ACK^A01^ACK|X9|P|2.5.1\r"
                f"MSA|CA|{ours[10]}\r"
            )
            sock.sendall(b"\x0b" + theirs.encode() + b"\x1c\r")
            sock.sendall(b"\x0b" + adt("APP3") + b"\x1c\r")
            (next_ack,) = read_acks(sock, 1)
            assert msa(next_ack)[:2] == ["AA", "APP3"]
        assert not [m for m in service.store.find() if m.external_id.endswith("|X9")]
    finally:
        service.close()


class SlowReceiver:
    """The listener's receiver, with each commit held for `delay` seconds: a shutdown can
    come while a message is being committed."""

    def __init__(self, receiver: Any, delay: float) -> None:
        self.receiver, self.delay = receiver, delay
        self.committing = threading.Event()

    async def receive(self, raws: list[bytes], where: str) -> Any:
        self.committing.set()
        await asyncio.sleep(self.delay)
        return await self.receiver.receive(raws, where)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.receiver, name)


def test_shutdown_acknowledges_what_is_being_committed_and_closes_idle_connections(
    served: Served, service: IngestService, held: HeldDispatcher
) -> None:
    listener = served.listener
    slow = SlowReceiver(listener.receiver, 0.5)
    listener.receiver = slow  # type: ignore[assignment]
    with served.socket() as idle, served.socket() as busy:
        idle.sendall(b"\x0b" + adt("idle-1") + b"\x1c\r")
        assert msa(read_acks(idle, 1)[0])[:2] == ["AA", "idle-1"]
        slow.committing.clear()
        busy.sendall(b"\x0b" + adt("in-flight") + b"\x1c\r")
        assert slow.committing.wait(5)
        closing = asyncio.run_coroutine_threadsafe(listener.close(), served.loop)
        # The message being committed is acknowledged before its connection closes ...
        assert msa(read_acks(busy, 1)[0])[:2] == ["AA", "in-flight"]
        assert busy.recv(100) == b""
        # ... and the idle one is closed without an ACK to wait for.
        assert idle.recv(100) == b""
        closing.result(10)
    stored = {m.external_id for m in service.store.find(limit=10)}
    assert "SndApp|SndFac|in-flight" in stored
