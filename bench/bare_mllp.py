"""A bare MLLP receiver: the ceiling `bench/hl7v2.py` measures the hub's listener against.

It does the least any receiver must do that commits a message before acknowledging it:
read frames (uvloop streams, as `hub mllp`), insert their raw bytes into the hub's own
`messages` table in group commits on a thread of its own (plain sqlite3 or psycopg
`executemany`, whatever piled up while the last commit ran, as the hub's group commit
does), and answer a CA echoing MSH-10. No header checks, no order key, no duplicate
check, no dispatch to workers, no logging: what is left is sockets, the event loop,
the hand-off to the commit thread and the commit itself.

    python bench/bare_mllp.py DATABASE_URL PORT
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg

START, END = b"\x0b", b"\x1c\r"
COLUMNS = "source, adapter, external_id, raw, status, attempts, received_at, updated_at"


def committer(url: str) -> Callable[[list[tuple[bytes, bytes]]], None]:
    """A function that inserts (control id, raw) pairs in one transaction."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        sql = f"INSERT INTO messages ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"

        def commit_sqlite(rows: list[tuple[bytes, bytes]]) -> None:
            at = datetime.now(UTC).isoformat()
            with conn:
                conn.executemany(sql, [_row(c, r, at) for c, r in rows])

        return commit_sqlite
    pg = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1))
    sql = f"INSERT INTO messages ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"

    def commit_pg(rows: list[tuple[bytes, bytes]]) -> None:
        at = datetime.now(UTC)
        with pg.transaction(), pg.cursor() as cur:
            cur.executemany(sql, [_row(c, r, at) for c, r in rows])

    return commit_pg


def _row(control_id: bytes, raw: bytes, at: Any) -> tuple[Any, ...]:
    return ("bare", "hl7v2", control_id.decode(), raw, "received", 0, at, at)


class GroupCommit:
    """What arrives while a commit runs goes in the next one."""

    def __init__(self, commit: Callable[[list[tuple[bytes, bytes]]], None]) -> None:
        self.commit = commit
        self.queue: list[tuple[bytes, bytes, asyncio.Future[None]]] = []
        self.ready = threading.Condition()
        self.loop = asyncio.get_running_loop()
        threading.Thread(target=self._run, daemon=True).start()

    def submit(self, control_id: bytes, raw: bytes) -> asyncio.Future[None]:
        done: asyncio.Future[None] = self.loop.create_future()
        with self.ready:
            self.queue.append((control_id, raw, done))
            self.ready.notify()
        return done

    def _run(self) -> None:
        while True:
            with self.ready:
                while not self.queue:
                    self.ready.wait()
                group, self.queue = self.queue, []
            self.commit([(c, r) for c, r, _ in group])
            self.loop.call_soon_threadsafe(_finish, [d for _, _, d in group])


def _finish(done: list[asyncio.Future[None]]) -> None:
    for d in done:
        d.set_result(None)


async def serve(url: str, port: int) -> None:
    commits = GroupCommit(committer(url))

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = b""
        while data := await reader.read(1 << 16):
            buffer += data
            frames = []
            while (end := buffer.find(END)) >= 0:
                frames.append(buffer[buffer.index(START) + 1 : end])
                buffer = buffer[end + len(END) :]
            waits = []
            for raw in frames:
                msh = raw[: raw.find(b"\r")].split(b"|")
                waits.append((msh[9], commits.submit(msh[9], raw)))
            for control_id, done in waits:
                await done
                writer.write(START + b"MSH|^~\\&|||||||ACK|" + control_id + b"|P|2.5.1\r")
                writer.write(b"MSA|CA|" + control_id + b"\r" + END)
        writer.close()

    server = await asyncio.start_server(connection, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(serve(sys.argv[1], int(sys.argv[2])))
    except ImportError:
        asyncio.run(serve(sys.argv[1], int(sys.argv[2])))
