"""An asyncio MLLP server: many connections, many messages each, bounded in every way.

Each connection reads what TCP gives, deframes it (`adapters.hl7v2.framing`), and hands
the messages of each read to the receiver together (a sender that pipelines is
committed in one group, its messages in order); their ACKs go back in the same order.
A connection idle for `idle_timeout` seconds is closed, and so is one that sends a
frame over `max_frame` bytes (answered first with an AR naming the limit: the frame is
not stored, as it was not read). Bytes outside frames are dropped and logged. A sender
that disconnects mid-frame loses only that frame, which was never acknowledged: it
sends it again. No error of one connection reaches another, nor stops the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass

from adapters.hl7v2.ack import ErrorDetail, build_unreadable
from adapters.hl7v2.framing import Deframer, frame
from adapters.hl7v2.receive import Answer, Receiver
from hub import logs

log = logging.getLogger("hub.mllp")

READ_SIZE = 1 << 16


@dataclass
class Counters:
    connections: int = 0
    open: int = 0
    messages: int = 0
    junk_bytes: int = 0
    oversized: int = 0
    idle_closed: int = 0
    cut_mid_frame: int = 0


class Listener:
    def __init__(
        self,
        receiver: Receiver,
        host: str = "127.0.0.1",
        port: int = 2575,
        *,
        max_frame: int = 1 << 20,
        idle_timeout: float = 300.0,
        reuse_port: bool = False,
        grace: float = 5.0,
    ) -> None:
        self.receiver = receiver
        self.host, self.port = host, port
        self.max_frame, self.idle_timeout = max_frame, idle_timeout
        self.reuse_port = reuse_port
        self.grace = grace
        self.counters = Counters()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        # Connections between reading frames and writing their ACKs: not cut at shutdown.
        self._busy: set[asyncio.Task[None]] = set()
        self._closing = False

    async def start(self, sock: socket.socket | None = None) -> None:
        if sock is not None:
            self._server = await asyncio.start_server(self._serve, sock=sock)
        else:
            self._server = await asyncio.start_server(
                self._serve, self.host, self.port, reuse_port=self.reuse_port or None
            )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("MLLP listening on %s:%s", self.host, self.port)

    async def close(self) -> None:
        """Stop accepting; close the connections waiting for a frame at once, and let
        those committing frames write their ACKs first (for `grace` seconds at most), so
        that what was committed is acknowledged. A frame cut short is never acknowledged:
        its sender sends it again."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for task in list(self._connections - self._busy):
            task.cancel()
        if self._busy:
            _, late = await asyncio.wait(set(self._busy), timeout=self.grace)
            for task in late:
                log.warning("an MLLP connection still committing after %ss: cut", self.grace)
                task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        where = f"mllp {peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "mllp"
        self.counters.connections += 1
        # Each connection is a task with its own context: its lines carry its own id.
        logs.request_id.set(f"mllp-{self.counters.connections}")
        self.counters.open += 1
        try:
            await self._converse(reader, writer, where)
        except asyncio.CancelledError:
            pass
        except (ConnectionError, OSError) as e:
            log.info("%s: connection lost: %s", where, e)
        except Exception:  # a bug must not stop the server: this connection ends
            log.exception("%s: closing the connection after an unexpected error", where)
        finally:
            self.counters.open -= 1
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(writer.wait_closed(), timeout=1)

    async def _converse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, where: str
    ) -> None:
        deframer = Deframer(self.max_frame)
        later: set[asyncio.Task[None]] = set()  # application ACKs waiting for processing
        try:
            await self._read_loop(reader, writer, where, deframer, later)
        finally:
            for task in later:
                task.cancel()

    async def _application_ack(self, writer: asyncio.StreamWriter, answer: Answer) -> None:
        built = await self.receiver.application_ack(answer)
        if built is not None and not writer.is_closing():
            writer.write(frame(built))
            await writer.drain()

    async def _read_loop(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        where: str,
        deframer: Deframer,
        later: set[asyncio.Task[None]],
    ) -> None:
        while True:
            try:
                # asyncio.timeout, not wait_for: no task of its own for every read.
                async with asyncio.timeout(self.idle_timeout):
                    data = await reader.read(READ_SIZE)
            except TimeoutError:
                self.counters.idle_closed += 1
                log.info("%s: idle for %ss, closed", where, self.idle_timeout)
                return
            if not data:
                if deframer.partial:
                    self.counters.cut_mid_frame += 1
                    log.warning(
                        "%s: disconnected in the middle of a frame (%s bytes dropped, "
                        "never acknowledged)",
                        where,
                        deframer.partial,
                    )
                return
            found = deframer.feed(data)
            if found.junk:
                self.counters.junk_bytes += found.junk
                log.warning("%s: %s bytes outside any MLLP frame dropped", where, found.junk)
            if found.messages:
                self.counters.messages += len(found.messages)
                me = asyncio.current_task()
                assert me is not None
                self._busy.add(me)
                try:
                    answers = await self.receiver.receive(found.messages, where)
                    for answer in answers:
                        if answer.ack is not None:
                            writer.write(frame(answer.ack))
                        if answer.wants_application_ack:
                            task = asyncio.create_task(self._application_ack(writer, answer))
                            later.add(task)
                            task.add_done_callback(later.discard)
                    await writer.drain()
                finally:
                    self._busy.discard(me)
                if self._closing:
                    log.info("%s: acknowledged, closed for shutdown", where)
                    return
            if found.oversized:
                self.counters.oversized += found.oversized
                log.warning(
                    "%s: a frame over the %s-byte limit: refused, connection closed",
                    where,
                    self.max_frame,
                )
                text = f"the message is over the {self.max_frame}-byte limit of this receiver"
                writer.write(frame(build_unreadable(b"", [ErrorDetail("207", text)], text)))
                await writer.drain()
                return
