"""HL7 v2 receiving benchmark of fhir-hub: acknowledged MLLP messages per second.

1. The hub: `hub mllp` in its own process on a freshly made database (--backends: SQLite
   in a temporary file, and/or PostgreSQL at --database-url, recreated and migrated), with
   Redis as the broker (--broker-url, a database number of its own, emptied before and
   after): the production topology, where the listener only commits and enqueues and
   Celery workers process (none runs here: the figure is the receiving side's).
2. Throughput: --senders concurrent MLLP connections (asyncio, in this process), each
   sending an ADT^A01 (the HL7 v2-to-FHIR IG's sample, its MSH-10 made unique) and
   waiting for its ACK before the next, for --seconds after a one-second warm-up. Every
   ACK must be AA with the message's control id. Figure: ACKs per second. The number of
   commits (distinct `received_at` in the table) gives the mean group size.
3. Latency: the same connections sending together a steady --rate messages per second
   (each on its own schedule, staggered) for --latency-seconds: p50, p99 and max of send
   to ACK.
4. Baseline, right after, on the same database: the same bytes inserted into the
   messages table by plain SQL (executemany, `hl7v2_commit_group`-sized transactions,
   no framing, no header, no duplicates check, no network), as many rows as the hub
   acknowledged: the ceiling of any receiver that commits each message before its ACK.

    .venv/bin/python bench/hl7v2.py [--backends sqlite,postgresql] [--senders 16] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    HOST,
    ROOT,
    Server,
    free_port,
    idle_share,
    libpq_url,
    recreate_database,
    revision,
    scratch,
)

SAMPLE = (ROOT / "tests" / "data" / "hl7v2" / "ig-ADT_A01.hl7").read_bytes()
START, END = b"\x0b", b"\x1c\r"


def message(control_id: str) -> bytes:
    return SAMPLE.replace(b"|4637382|", f"|{control_id}|".encode(), 1)


async def _ack(reader: asyncio.StreamReader) -> bytes:
    data = await reader.readuntil(END)
    return data[data.index(START) + 1 : -len(END)]


def _check(ack: bytes, control_id: str) -> None:
    msa = [s for s in ack.split(b"\r") if s.startswith(b"MSA|")]
    # The IG sample is in enhanced mode (MSH-15 AL): CA.
    if not msa or msa[0].split(b"|")[1:3] != [b"CA", control_id.encode()]:
        raise SystemExit(f"unexpected ACK for {control_id}: {ack!r}")


async def throughput(port: int, senders: int, seconds: float, tag: str) -> tuple[int, float]:
    counts = [0] * senders
    measuring = asyncio.Event()

    async def send(i: int, deadline: float) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        n = 0
        while time.monotonic() < deadline:
            control_id = f"{tag}{i}-{n}"
            writer.write(START + message(control_id) + END)
            _check(await _ack(reader), control_id)
            n += 1
            if measuring.is_set():
                counts[i] += 1
        writer.close()

    warm = 1.0
    deadline = time.monotonic() + warm + seconds
    tasks = [asyncio.create_task(send(i, deadline)) for i in range(senders)]
    await asyncio.sleep(warm)
    measuring.set()
    started = time.monotonic()
    await asyncio.gather(*tasks)
    return sum(counts), time.monotonic() - started


async def latency(port: int, senders: int, rate: float, seconds: float, tag: str) -> list[float]:
    every = senders / rate
    found: list[float] = []

    async def send(i: int) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        start = time.monotonic() + 0.2 + every * i / senders
        n = 0
        while True:
            at = start + n * every
            if at > start + seconds:
                break
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            control_id = f"{tag}{i}-{n}"
            sent = time.perf_counter()
            writer.write(START + message(control_id) + END)
            _check(await _ack(reader), control_id)
            found.append(time.perf_counter() - sent)
            n += 1
        writer.close()

    await asyncio.gather(*(send(i) for i in range(senders)))
    return found


def _wait_port(port: int, server: Server, timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise SystemExit(server.log.read_text(errors="replace")[-2000:])
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"hub mllp did not listen on {port}")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def groups(url: str) -> int:
    sql = "SELECT count(DISTINCT received_at) FROM messages"
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return int(conn.execute(sql).fetchone()[0])
    with psycopg.connect(libpq_url(url)) as conn:
        row = conn.execute(sql).fetchone()
        return int(row[0]) if row else 0


def commits_total(url: str, tag: str) -> int:
    """Messages the throughput part stored (warm-up included)."""
    sql = "SELECT count(*) FROM messages WHERE external_id LIKE '%|" + tag + "%'"
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return int(conn.execute(sql).fetchone()[0])
    with psycopg.connect(libpq_url(url)) as conn:
        row = conn.execute(sql).fetchone()
        return int(row[0]) if row else 0


def baseline(url: str, rows: int, group: int) -> float:
    """Plain SQL inserts of the same bytes into the messages table: rows per second."""
    now = datetime.now(UTC)
    values = [
        ("SndApp/SndFac", "hl7v2", f"base{group}|{n}", message(f"b{n}"), "received", 0, now, now)
        for n in range(rows)
    ]
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        conn.execute("PRAGMA journal_mode=WAL")
        sql = (
            "INSERT INTO messages (source, adapter, external_id, raw, status, attempts, "
            "received_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        )
        started = time.perf_counter()
        for i in range(0, rows, group):
            with conn:
                conn.executemany(
                    sql,
                    [(*v[:6], v[6].isoformat(), v[7].isoformat()) for v in values[i : i + group]],
                )
        seconds = time.perf_counter() - started
        conn.close()
        return rows / seconds
    sql = (
        "INSERT INTO messages (source, adapter, external_id, raw, status, attempts, "
        "received_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
    )
    with psycopg.connect(libpq_url(url)) as conn:
        started = time.perf_counter()
        for i in range(0, rows, group):
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(sql, values[i : i + group])
        return rows / (time.perf_counter() - started)


def _run(coroutine: Any) -> Any:
    """The senders on uvloop where installed (uvicorn[standard] brings it): the bench's
    own loop must cost little beside the hub's."""
    try:
        import uvloop

        return uvloop.run(coroutine)
    except ImportError:
        return asyncio.run(coroutine)


def run(backend: str, url: str, args: argparse.Namespace, folder: Path) -> dict[str, float]:
    if backend == "postgresql":
        recreate_database(url)
    else:
        subprocess.run(
            [sys.executable, "-m", "hub.cli", "db", "upgrade", "--database-url", url],
            cwd=ROOT, check=True, capture_output=True,
        )  # fmt: skip
    broker = redis.Redis.from_url(args.broker_url)
    broker.flushdb()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env.update(
        HUB_DATABASE_URL=url, HUB_MLLP_PORT=str(port), HUB_BROKER_URL=args.broker_url,
        HUB_LOG_LEVEL="warning",
    )  # fmt: skip
    server = Server(
        "hub mllp", [sys.executable, "-m", "hub.cli", "mllp"], 0, folder / f"{backend}.log", env
    )
    try:
        _wait_port(port, server)
        cpu_before = cpu_seconds(server.proc.pid)
        acked, seconds = _run(throughput(port, args.senders, args.seconds, "T"))
        # Warm-up included on both sides of the ratio: CPU per ACK of the whole run.
        cpu = cpu_seconds(server.proc.pid) - cpu_before
        commits = groups(url)
        lat = _run(latency(port, args.senders, args.rate, args.latency_seconds, "L"))
    finally:
        server.stop()
        broker.flushdb()
    lat.sort()
    group = acked / max(commits, 1)
    base = baseline(url, max(acked, 1000), args.group)
    same = baseline(url, max(acked, 1000), max(1, round(group)))
    return {
        "cpu_us": 1e6 * cpu / max(1, commits_total(url, "T")),
        "baseline_same_per_s": same,
        "acked_per_s": acked / seconds,
        "acked": acked,
        "group": group,
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * lat[int(len(lat) * 0.99) - 1],
        "max_ms": 1000 * lat[-1],
        "latency_n": len(lat),
        "baseline_per_s": base,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument(
        "--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/hub_bench_hl7v2"
    )
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--senders", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--latency-seconds", type=float, default=10)
    parser.add_argument("--group", type=int, default=500, help="baseline rows per transaction")
    args = parser.parse_args()
    print(f"fhir-hub {revision()}, {os.cpu_count()} CPUs ({idle_share():.0%} idle before the "
          f"run); {args.senders} MLLP senders, ADT^A01 of {len(SAMPLE)} bytes")  # fmt: skip
    with scratch() as folder:
        for backend in args.backends.split(","):
            url = args.database_url if backend == "postgresql" else f"sqlite:///{folder / 'hub.db'}"
            r = run(backend, url, args, folder)
            print(
                f"{backend:<10} hub: {r['acked_per_s']:7.0f} ACKs/s ({r['acked']:.0f} in "
                f"{args.seconds:.0f} s, {r['group']:.1f} messages per commit, hub process "
                f"{r['cpu_us']:.0f} us CPU per message: {1e6 / r['cpu_us']:.0f}/s on a core of "
                f"its own)\n"
                f"{'':<10} baseline plain SQL inserts: {r['baseline_per_s']:7.0f} rows/s "
                f"{args.group} per commit "
                f"(hub/baseline {r['acked_per_s'] / r['baseline_per_s']:.0%}), "
                f"{r['baseline_same_per_s']:7.0f} rows/s {round(r['group'])} per commit "
                f"(hub/baseline {r['acked_per_s'] / r['baseline_same_per_s']:.0%})\n"
                f"{'':<10} ACK latency at {args.rate:.0f}/s: p50 {r['p50_ms']:.1f} ms, "
                f"p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.1f} ms "
                f"({r['latency_n']:.0f} messages)"
            )


if __name__ == "__main__":
    main()
