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
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import ingest as ingest_bench
from bench.common import (
    HOST,
    ROOT,
    Server,
    free_port,
    http_get,
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
    """CPU time (user + system) a process and the others of its process group (`hub mllp
    --processes`) have used, all their threads."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


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
        HUB_LOG_LEVEL="warning", HUB_MLLP_PROCESSES=str(args.mllp_processes),
    )  # fmt: skip
    server = Server(
        "hub mllp", [sys.executable, "-m", "hub.cli", "mllp"], 0, folder / f"{backend}.log", env
    )
    try:
        _wait_port(port, server)
        if args.mllp_processes > 1:
            time.sleep(5)  # the other processes start once the first listens: not measured
        cpu_before = cpu_seconds(server.proc.pid)
        spy = None
        if args.profile:  # `hub mllp` during the throughput part, once warm (imports)
            _run(throughput(port, args.senders, 2, "W"))
            spy = profile_worker(server, args.seconds, Path(args.profile), args.profile_idle, 200)
        acked, seconds = _run(throughput(port, args.senders, args.seconds, "T"))
        if spy is not None:
            spy.wait(timeout=60)
        # Warm-up included on both sides of the ratio: CPU per ACK of the whole run.
        cpu = cpu_seconds(server.proc.pid) - cpu_before
        commits = groups(url)
        lat = _run(latency(port, args.senders, args.rate, args.latency_seconds, "L"))
    finally:
        server.stop()
        broker.flushdb()
    lat.sort()
    group = acked / max(commits, 1)
    bare = bare_receiver(url, args, folder) if args.bare else {}
    base = baseline(url, max(acked, 1000), args.group)
    same = baseline(url, max(acked, 1000), max(1, round(group)))
    return bare | {
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


def bare_receiver(url: str, args: argparse.Namespace, folder: Path) -> dict[str, float]:
    """The same senders against `bench/bare_mllp.py` on the same database: the ceiling of
    any receiver that commits each message before its ACK, on this machine, in this run."""
    port = free_port()
    server = Server(
        "bare receiver",
        [sys.executable, str(ROOT / "bench" / "bare_mllp.py"), url, str(port)],
        0,
        folder / "bare.log",
        dict(os.environ),
    )
    try:
        _wait_port(port, server)
        cpu_before = cpu_seconds(server.proc.pid)
        acked, seconds = _run(throughput(port, args.senders, args.seconds, "B"))
        cpu = cpu_seconds(server.proc.pid) - cpu_before
        lat = sorted(_run(latency(port, args.senders, args.rate, args.latency_seconds, "BL")))
    finally:
        server.stop()
    return {
        "bare_per_s": acked / seconds,
        "bare_cpu_us": 1e6 * cpu / max(1, acked),
        "bare_p50_ms": 1000 * statistics.median(lat),
        "bare_p99_ms": 1000 * lat[int(len(lat) * 0.99) - 1],
    }


# --- end to end: sent over MLLP to searchable through FHIR ---------------------------------

SEARCH_SYSTEM = "urn:oid:1.2.3.4.5"  # the IG sample's PID-3 authority (V2FHIR)


def patient_message(control_id: str, mrn: str) -> bytes:
    """The IG's ADT^A01 about a patient of its own: PID-3.1 (the Patient's key) is `mrn`,
    PV1-19 stays (the Encounter's key is the patient and the visit: one each)."""
    return message(control_id).replace(b"PID|1||1032702^", f"PID|1||{mrn}^".encode(), 1)


async def send_all(port: int, raws: list[tuple[str, bytes]], senders: int) -> float:
    """Every message sent over `senders` connections, each waiting for its ACK before the
    next; seconds until the last ACK."""
    started = time.monotonic()

    async def send(share: list[tuple[str, bytes]]) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        for control_id, raw in share:
            writer.write(START + raw + END)
            _check(await _ack(reader), control_id)
        writer.close()

    await asyncio.gather(*(send(raws[i::senders]) for i in range(senders)))
    return time.monotonic() - started


class Meter:
    """CPU seconds each named group of processes used from `start()` on: process groups (a
    server and everything it spawned) and the PostgreSQL backends of the database."""

    def __init__(self, groups: dict[str, list[Server]], url: str | None) -> None:
        self.groups, self.url = groups, url
        self.first: dict[str, dict[int, float]] = {}
        self.last: dict[str, dict[int, float]] = {}

    def _read(self) -> dict[str, dict[int, float]]:
        found = {
            name: ingest_bench.cpu_seconds(
                [p for s in servers for p in ingest_bench.group_pids(s.proc.pid)]
            )
            for name, servers in self.groups.items()
        }
        if self.url is not None:
            with psycopg.connect(libpq_url(self.url)) as conn:
                found["postgres"] = ingest_bench.cpu_seconds(ingest_bench.backend_pids(conn))
        return found

    def start(self) -> None:
        self.first = self._read()
        self.last = {k: dict(v) for k, v in self.first.items()}

    def sample(self) -> None:
        for key, now in self._read().items():
            self.last.setdefault(key, {}).update(now)

    def used(self) -> dict[str, float]:
        self.sample()
        return {
            key: sum(v - self.first.get(key, {}).get(pid, 0.0) for pid, v in last.items())
            for key, last in self.last.items()
        }


def statuses(url: str) -> dict[str, int]:
    sql = "SELECT status, count(*) FROM messages GROUP BY status"
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return {r[0]: int(r[1]) for r in conn.execute(sql)}
    with psycopg.connect(libpq_url(url)) as conn:
        return {r[0]: int(r[1]) for r in conn.execute(sql)}


def count(api: str, query: str) -> int:
    status, body = http_get(f"{api}/fhir/{query}", timeout=30)
    if status != 200:
        raise SystemExit(f"GET {query}: {status} {body[:300]!r}")
    return int(json.loads(body)["total"])


def until_searchable(
    url: str, api: str, mrns: list[str], meter: Meter | None, deadline: float, already: int = 0
) -> tuple[float, float]:
    """Clock times when every message was done, and when every patient was found through
    FHIR (a count of all, and a few by identifier); `already` done before these."""
    while True:
        if meter is not None:
            meter.sample()
        counts = statuses(url)
        if counts.get("done", 0) == already + len(mrns):
            done = time.monotonic()
            break
        bad = {k: v for k, v in counts.items() if k in ("failed", "dead")}
        if bad or time.monotonic() > deadline:
            raise SystemExit(f"messages did not end done: {counts}")
        time.sleep(0.1)
    while count(api, "Patient?_summary=count") < already + len(mrns):
        if time.monotonic() > deadline:
            raise SystemExit("the patients were done but not searchable")
        time.sleep(0.1)
    for mrn in mrns[:: max(1, len(mrns) // 5)]:
        if count(api, f"Patient?identifier={SEARCH_SYSTEM}|{mrn}&_summary=count") != 1:
            raise SystemExit(f"patient {mrn} not found by its identifier")
    return done, time.monotonic()


def transaction_baseline(api: str, raws: list[bytes], senders: int) -> tuple[float, float]:
    """The same resources through the hub's REST API: each message parsed and mapped here
    (the hub's own adapter and maps), its resources PUT in one transaction Bundle, `senders`
    clients at once. Messages a second through REST; mapping's CPU a message, here."""
    from adapters.hl7v2 import Hl7v2Adapter

    adapter = Hl7v2Adapter(ROOT / "mappings" / "hl7v2")
    cpu = time.process_time()
    bundles = []
    for raw in raws:
        tree = adapter.parse(raw)
        mapped = adapter.map(tree, adapter.mapper_for(tree))
        entries = [
            {
                "resource": r,
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
            }
            for r in mapped.resources
        ]
        bundles.append(
            json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})
        )
    mapping_cpu = (time.process_time() - cpu) / len(raws)

    import httpx

    def post(share: list[str]) -> None:
        with httpx.Client(timeout=60) as client:
            for body in share:
                r = client.post(
                    f"{api}/fhir", content=body, headers={"content-type": "application/fhir+json"}
                )
                if r.status_code != 200:
                    raise SystemExit(f"transaction: {r.status_code} {r.text[:300]}")

    started = time.monotonic()
    threads = [threading.Thread(target=post, args=(bundles[i::senders],)) for i in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(raws) / (time.monotonic() - started), mapping_cpu


def profile_worker(
    worker: Server, seconds: float, out: Path, idle: bool = False, rate: int = 50
) -> subprocess.Popen[bytes] | None:
    """py-spy on a process and its children (a worker's pool), `seconds` long, raw
    (collapsed) stacks, every thread."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        print("py-spy is not installed (.venv/bin/pip install py-spy): no profile")
        return None
    argv = [str(spy), "record", "--subprocesses", "--nonblocking", "-r", str(rate), "-f", "raw"]
    argv += ["-d", str(int(seconds)), "-o", str(out), "-p", str(worker.proc.pid), "--threads"]
    if idle:  # waits too (a lock, the database): where a thread's time goes, not its CPU
        argv.append("--idle")
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def end_to_end(mode: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """One mode: `embedded` (`hub serve` on SQLite, the listener and processing in one
    process, as `make run`) or `celery` (`hub mllp`, `hub worker`, `hub serve --no-mllp`
    for the searches, on PostgreSQL with Redis)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env.update(HUB_LOG_LEVEL="warning", PYTHONUNBUFFERED="1")
    mllp_port, api_port = free_port(), free_port()
    env.update(HUB_MLLP_PORT=str(mllp_port))
    servers: list[Server] = []
    hub = [sys.executable, "-m", "hub.cli"]
    if mode == "embedded":
        url = f"sqlite:///{folder / 'e2e.db'}"
        subprocess.run([*hub, "db", "upgrade", "--database-url", url], cwd=ROOT, check=True,
                       capture_output=True)  # fmt: skip
        env["HUB_DATABASE_URL"] = url
        api = Server("hub serve", [*hub, "serve", "--port", str(api_port)], api_port,
                     folder / "e2e-serve.log", env)  # fmt: skip
        servers.append(api)
        groups = {"hub serve": [api]}
        pg: str | None = None
    else:
        url = pg = args.database_url.rsplit("/", 1)[0] + "/hub_bench_hl7v2_e2e"
        recreate_database(url)
        broker = redis.Redis.from_url(args.e2e_broker_url)
        broker.flushdb()
        env.update(HUB_DATABASE_URL=url, HUB_BROKER_URL=args.e2e_broker_url)
        listener = Server("hub mllp", [*hub, "mllp"], 0, folder / "e2e-mllp.log", env)
        worker = Server("hub worker", [*hub, "worker", "--concurrency", str(args.e2e_workers),
                        "--loglevel", "info"], 0, folder / "e2e-worker.log", env)  # fmt: skip
        api = Server("hub serve", [*hub, "serve", "--no-mllp", "--port", str(api_port)],
                     api_port, folder / "e2e-serve.log", env)  # fmt: skip
        servers += [listener, worker, api]
        groups = {"hub mllp": [listener], "workers": [worker], "hub serve": [api]}
    try:
        api.wait_ready()
        _wait_port(mllp_port, api if mode == "embedded" else servers[0])
        if mode == "celery":
            deadline = time.monotonic() + 60
            while "ready." not in servers[1].log.read_text(errors="replace"):
                if time.monotonic() > deadline:
                    raise SystemExit("hub worker did not start")
                time.sleep(0.1)
        # Warm-up, not measured: each worker process builds its parts on its first task.
        warm = [f"W{n:04d}" for n in range(4 * args.e2e_workers)]
        _run(send_all(mllp_port, [(m, patient_message(m, m)) for m in warm], args.senders))
        until_searchable(url, api.base, warm, None, time.monotonic() + 120)
        tag = f"E{mode[0]}"
        mrns = [f"{tag}{n:06d}" for n in range(args.messages)]
        raws = [(f"{tag}-{n}", patient_message(f"{tag}-{n}", m)) for n, m in enumerate(mrns)]
        meter = Meter(groups, pg)
        spy = None
        if args.profile and (mode == "embedded") == (args.profile_of == "serve"):
            named = dict(zip(("listener", "workers", "serve"), servers, strict=False))
            target = servers[0] if mode == "embedded" else named[args.profile_of]
            spy = profile_worker(
                target, args.profile_seconds, Path(args.profile), args.profile_idle
            )
        meter.start()
        started = time.monotonic()
        acked = _run(send_all(mllp_port, raws, args.senders))
        done, found = until_searchable(
            url, api.base, mrns, meter, started + args.deadline, already=len(warm)
        )
        cpu = meter.used()
        if spy is not None:
            spy.wait()
        # Before the REST baseline adds rows of its own: the rows these messages stored.
        ceiling = (
            ingest_bench.copy_ceiling(url, args.messages + len(warm), False, per_commit=100)
            if mode == "celery" and args.ceiling
            else None
        )
        base_raws = [patient_message(f"R-{n}", f"R{n:06d}") for n in range(args.baseline_messages)]
        rest, mapping_cpu = transaction_baseline(api.base, base_raws, args.senders)
    finally:
        for server in reversed(servers):
            server.stop()
        if mode == "celery":
            redis.Redis.from_url(args.e2e_broker_url).flushdb()
    return {
        "messages": args.messages,
        "acked_s": acked,
        "done_s": done - started,
        "searchable_s": found - started,
        "per_s": args.messages / (found - started),
        "cpu": {k: 1e3 * v / args.messages for k, v in cpu.items()},
        "rest_per_s": rest,
        "mapping_ms": 1e3 * mapping_cpu,
    } | (
        {
            "ceiling_per_s": ceiling.rate,
            "ceiling_rows": ceiling.stored_rows / ceiling.csv_rows,
            "ceiling_ms": 1e3 * ceiling.cpu_per_unit,
            "ceiling_client_ms": 1e3 * ceiling.client_cpu / ceiling.csv_rows,
            "work": fhir_work([raw for _, raw in raws[:200]]),
        }
        if ceiling is not None
        else {}
    )


def fhir_work(raws: list[bytes]) -> dict[str, float]:
    """CPU a message of the FHIR work alone, in this process, with the hub's own code: the
    v2 parse, the mapping, validation (fhir.resources, as every write is validated) and
    search index extraction of every resource the message makes."""
    from adapters.hl7v2 import Hl7v2Adapter
    from hub.fhir import validate
    from hub.search.extract import extract
    from hub.search.registry import load_default

    adapter = Hl7v2Adapter(ROOT / "mappings" / "hl7v2")
    registry = load_default()
    spent = dict.fromkeys(("parse", "map", "validate", "index"), 0.0)
    for raw in raws:
        at = time.process_time()
        tree = adapter.parse(raw)
        parsed = time.process_time()
        resources = adapter.map(tree, adapter.mapper_for(tree)).resources
        mapped = time.process_time()
        for r in resources:
            validate(r)
        validated = time.process_time()
        for r in resources:
            extract(registry, r)
        done = time.process_time()
        spent["parse"] += parsed - at
        spent["map"] += mapped - parsed
        spent["validate"] += validated - mapped
        spent["index"] += done - validated
    return {k: 1e3 * v / len(raws) for k, v in spent.items()}


def report_end_to_end(mode: str, r: dict[str, Any]) -> str:
    cpu = ", ".join(f"{k} {v:.1f} ms" for k, v in r["cpu"].items())
    total = sum(r["cpu"].values())
    return (
        f"{mode:<9} end to end: {r['per_s']:6.1f} ADT^A01/s ({r['messages']} messages: all "
        f"ACKed at {r['acked_s']:.1f} s, done at {r['done_s']:.1f} s, searchable at "
        f"{r['searchable_s']:.1f} s)\n"
        f"{'':<9} CPU a message: {cpu}; total {total:.1f} ms = {1e3 / total:.0f}/s a core, "
        f"{2e3 / total:.0f}/s on 2 cores\n"
        f"{'':<9} baseline, the same resources as REST transactions: {r['rest_per_s']:6.1f} "
        f"messages/s (parse + map here: {r['mapping_ms']:.1f} ms CPU a message)"
    ) + (_ceiling_report(r) if "ceiling_per_s" in r else "")


def _ceiling_report(r: dict[str, Any]) -> str:
    work = r["work"]
    floor = r["ceiling_ms"] + work["validate"] + work["index"]
    return (
        f"\n{'':<9} ceiling, the rows these messages stored ({r['ceiling_rows']:.0f} a message) "
        f"inserted again by raw psycopg: {r['ceiling_per_s']:6.1f} messages/s on one "
        f"connection, {r['ceiling_ms']:.2f} ms CPU a message (PostgreSQL and client; client "
        f"{r['ceiling_client_ms']:.2f})\n"
        f"{'':<9} FHIR work alone, CPU a message: "
        + ", ".join(f"{k} {v:.2f} ms" for k, v in work.items())
        + f"\n{'':<9} floor: storing the rows + validating + indexing = {floor:.2f} ms CPU a "
        f"message: at most {2e3 / floor:.0f} messages/s on 2 cores, before parsing, mapping, "
        f"the message store and the queue"
    )


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
    parser.add_argument(
        "--mllp-processes", type=int, default=1, help="hub mllp --processes (receiving)"
    )
    parser.add_argument(
        "--no-bare", dest="bare", action="store_false", help="skip the bare receiver (ceiling)"
    )
    e2e = parser.add_argument_group("end to end (--end-to-end)")
    e2e.add_argument(
        "--end-to-end", action="store_true", help="sent to searchable through FHIR, instead"
    )
    e2e.add_argument("--modes", default="embedded,celery")
    e2e.add_argument("--messages", type=int, default=1000)
    e2e.add_argument("--baseline-messages", type=int, default=300)
    e2e.add_argument("--e2e-workers", type=int, default=2, help="hub worker --concurrency")
    e2e.add_argument("--e2e-broker-url", default="redis://127.0.0.1:6379/14")
    e2e.add_argument("--deadline", type=float, default=600)
    e2e.add_argument(
        "--no-ceiling",
        dest="ceiling",
        action="store_false",
        help="celery mode: skip the ceiling (the stored rows inserted again by raw psycopg)",
    )
    e2e.add_argument("--profile", help="py-spy raw profile to this file (receiving: of `hub mllp`)")
    e2e.add_argument(
        "--profile-of",
        choices=("workers", "listener", "serve"),
        default="workers",
        help="Celery mode: the workers or `hub mllp`; embedded mode: `hub serve`",
    )
    e2e.add_argument("--profile-seconds", type=float, default=15)
    e2e.add_argument("--profile-idle", action="store_true", help="py-spy --idle: waits too")
    args = parser.parse_args()
    if args.end_to_end:
        print(f"fhir-hub {revision()}, {os.cpu_count()} CPUs ({idle_share():.0%} idle before "
              f"the run); {args.senders} MLLP senders, ADT^A01 of {len(SAMPLE)} bytes, "
              f"distinct patients")  # fmt: skip
        with scratch() as folder:
            for mode in args.modes.split(","):
                print(report_end_to_end(mode, end_to_end(mode, args, folder)), flush=True)
        return
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
            if "bare_per_s" in r:
                print(
                    f"{'':<10} bare receiver (bench/bare_mllp.py): {r['bare_per_s']:7.0f} "
                    f"ACKs/s (hub/bare {r['acked_per_s'] / r['bare_per_s']:.0%}), "
                    f"{r['bare_cpu_us']:.0f} us CPU per message; ACK latency p50 "
                    f"{r['bare_p50_ms']:.1f} ms, p99 {r['bare_p99_ms']:.1f} ms"
                )


if __name__ == "__main__":
    main()
