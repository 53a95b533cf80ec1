"""An MLLP listener served in-process (its own event loop in a thread), and helpers to
talk to it with python-hl7's real client or a raw socket."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hl7
import hl7.client

from adapters.hl7v2.receive import build_receiver
from hub.ingest.service import IngestService
from hub.mllp.listener import Listener
from hub.settings import Settings

SAMPLES = Path(__file__).parent / "data" / "hl7v2"
START, END = b"\x0b", b"\x1c\r"


def sample(name: str) -> bytes:
    """An IG sample message (`ADT_A01`), segments ended by `\\r`."""
    return (SAMPLES / f"ig-{name}.hl7").read_bytes()


def adt(
    control_id: str,
    *,
    app: str = "SndApp",
    facility: str = "SndFac",
    extra: str = "",
    msh15: str = "",
    msh16: str = "",
    event: str = "ADT^A01^ADT_A01",
) -> bytes:
    return (
        f"MSH|^~\\&|{app}|{facility}|HUB|HUBFAC|20240102030405+0100||{event}|{control_id}|P|2.5.1"
        f"|||{msh15}|{msh16}\r"
        f"EVN|A01|20240102030405\r"
        f"PID|1||{control_id}^^^MRN^MR||Doe^Jane{extra}||19800101|F\r"
        f"PV1|1|I\r"
    ).encode()


class Served:
    def __init__(self, listener: Listener, loop: asyncio.AbstractEventLoop) -> None:
        self.listener, self.loop = listener, loop

    @property
    def port(self) -> int:
        return self.listener.port

    def client(self) -> hl7.client.MLLPClient:
        c = hl7.client.MLLPClient("127.0.0.1", self.port)
        c.socket.settimeout(10)
        return c

    def socket(self, timeout: float = 10) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        return s


@contextmanager
def listening(service: IngestService, settings: Settings, **options: Any) -> Iterator[Served]:
    """A listener on a free port over `service`, until the block ends."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    receiver = build_receiver(service, settings)
    listener = Listener(receiver, "127.0.0.1", 0, **options)
    asyncio.run_coroutine_threadsafe(listener.start(), loop).result(10)
    try:
        yield Served(listener, loop)
    finally:
        asyncio.run_coroutine_threadsafe(listener.close(), loop).result(30)
        asyncio.run_coroutine_threadsafe(receiver.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def read_acks(sock: socket.socket, count: int) -> list[bytes]:
    """`count` framed ACKs from a raw socket (their content, unframed)."""
    data = b""
    while data.count(END) < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return [f.lstrip(START) for f in data.split(END) if f.strip()]


def msa(ack: bytes) -> list[str]:
    """The ACK's MSA fields (code, control id, ...), read with python-hl7."""
    message = hl7.parse(ack.decode("latin-1"))
    segment = message.segment("MSA")
    return [str(f) for f in segment[1:]]


def err(ack: bytes) -> list[str]:
    return [str(s) for s in hl7.parse(ack.decode("latin-1")) if str(s[0]) == "ERR"]
