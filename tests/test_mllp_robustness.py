"""The listener against bad senders: junk, split and packed frames, oversized frames, idle
and vanishing connections, and fuzzed bytes. It never crashes, never stores half a
message, and keeps serving the next connection."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from hub.ingest.service import IngestService
from hub.settings import Settings
from tests.ingest_fixtures import hold
from tests.mllp_fixtures import Served, adt, listening, msa, read_acks


@pytest.fixture(scope="module")
def sqlite_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IngestService]:
    from hub.assembly import build_context
    from hub.store.migrate import upgrade
    from tests.conftest import MIGRATIONS

    url = f"sqlite:///{tmp_path_factory.mktemp('mllp') / 'hub.db'}"
    upgrade(url, MIGRATIONS)
    settings = Settings(database_url=url)
    service = IngestService(build_context(settings), settings, dispatcher="inline")
    hold(service)
    yield service
    service.close()
    service.ctx.repo.close()


@pytest.fixture(scope="module")
def served(sqlite_service: IngestService) -> Iterator[Served]:
    settings = sqlite_service.settings
    with listening(sqlite_service, settings, max_frame=4096, idle_timeout=0.5) as s:
        yield s


def framed(message: bytes) -> bytes:
    return b"\x0b" + message + b"\x1c\r"


def still_serving(served: Served, control_id: str) -> None:
    with served.client() as client:
        assert msa(client.send_message(adt(control_id)))[:2] == ["AA", control_id]


def stored(service: IngestService, control_id: str) -> list[bytes]:
    return [
        m.raw for m in service.store.find(limit=1000) if m.external_id.endswith(f"|{control_id}")
    ]


def test_junk_before_the_start_block_is_dropped(
    served: Served, sqlite_service: IngestService
) -> None:
    with served.socket() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n garbage \x1c\r" + framed(adt("J1")))
        (ack,) = read_acks(sock, 1)
    assert msa(ack)[:2] == ["AA", "J1"]
    assert stored(sqlite_service, "J1") == [adt("J1")]
    assert served.listener.counters.junk_bytes > 0


def test_a_frame_split_across_many_reads(served: Served, sqlite_service: IngestService) -> None:
    data = framed(adt("S1"))
    with served.socket() as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(data), 7):
            sock.sendall(data[i : i + 7])
            time.sleep(0.001)
        (ack,) = read_acks(sock, 1)
    assert msa(ack)[:2] == ["AA", "S1"]
    assert stored(sqlite_service, "S1") == [adt("S1")]


def test_an_end_block_split_between_reads(served: Served) -> None:
    data = framed(adt("S2"))
    with served.socket() as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(data[:-1])  # up to FS: not the end yet
        time.sleep(0.05)
        sock.sendall(data[-1:])
        (ack,) = read_acks(sock, 1)
    assert msa(ack)[:2] == ["AA", "S2"]


def test_several_frames_in_one_read(served: Served) -> None:
    with served.socket() as sock:
        sock.sendall(b"".join(framed(adt(f"M{n}")) for n in range(5)))
        acks = read_acks(sock, 5)
    assert [msa(a)[1] for a in acks] == [f"M{n}" for n in range(5)]


def test_an_oversized_frame_is_refused_and_its_connection_closed(
    served: Served, sqlite_service: IngestService
) -> None:
    big = adt("O1", extra="x" * 5000)
    with served.socket() as sock:
        sock.sendall(framed(big))
        (ack,) = read_acks(sock, 1)
        assert msa(ack)[0] == "AR" and b"4096-byte limit" in ack
        assert sock.recv(10) == b""  # closed
    assert stored(sqlite_service, "O1") == []
    still_serving(served, "O2")


def test_an_idle_connection_is_closed(served: Served) -> None:
    before = served.listener.counters.idle_closed
    with served.socket() as sock:
        sock.settimeout(5)
        started = time.monotonic()
        assert sock.recv(10) == b""
        assert time.monotonic() - started < 4
    assert served.listener.counters.idle_closed == before + 1


def test_a_sender_that_disconnects_mid_frame_leaves_nothing_stored(
    served: Served, sqlite_service: IngestService
) -> None:
    before = served.listener.counters.cut_mid_frame
    with served.socket() as sock:
        sock.sendall(framed(adt("H1")) + b"\x0b" + adt("H2")[:40])
        (ack,) = read_acks(sock, 1)
        assert msa(ack)[1] == "H1"
    deadline = time.monotonic() + 5
    while served.listener.counters.cut_mid_frame == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert served.listener.counters.cut_mid_frame == before + 1
    assert stored(sqlite_service, "H2") == []
    still_serving(served, "H3")


@hsettings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=300),
            st.binary(max_size=300).map(framed),
            st.text(max_size=200).map(lambda t: framed(("MSH|" + t).encode("utf-8", "replace"))),
            st.sampled_from([b"\x0b", b"\x1c", b"\r", b"\x1c\r", b"MSH|^~\\&|"]),
        ),
        max_size=8,
    )
)
def test_fuzzed_bytes_never_stop_the_listener(served: Served, chunks: list[bytes]) -> None:
    with served.socket(timeout=5) as sock:
        for chunk in chunks:
            try:
                sock.sendall(chunk)
            except OSError:  # the listener closed it (an oversized frame): fine
                break
    with served.client() as client:
        ack = client.send_message(adt("after-fuzz"))
    assert msa(ack)[:2] == ["AA", "after-fuzz"]
