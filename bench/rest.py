"""REST benchmark of fhir-hub: each figure against a bare baseline measured in the same run.

1. read by id, 32 clients: GET /fhir/Patient/{id} on PostgreSQL versus a bare FastAPI
   endpoint serving the same bytes from memory (its own uvicorn, same settings and workers).
2. create, 8 clients: POST /fhir/Patient versus one-row-per-commit inserts of the same JSON
   into a bare table (8 psycopg connections, one thread each).
3. 100-entry transaction Bundles, 8 clients: POST /fhir versus one executemany + commit of
   the same 100 rows per batch into a bare table.

Figures 2 and 3 also measure a ceiling: the rows the hub stores for the same resources
(current and history rows, search index rows from the hub's own extraction) written by raw
psycopg the way the hub writes them (COPY for a table of many rows, one pipeline for the
others), one commit per create or Bundle, with the same concurrency. Hub code that stores
these rows in the write's transaction cannot beat it, so its ratio to the baseline says how
much of a target the database's own work leaves reachable.

The bench drops and recreates its own database (--database-url, default hub_bench on the
local server), migrates it with `hub db upgrade` and serves it with `hub serve`. HTTP load
comes from `wrk` when it is on PATH, else from the asyncio HTTP/1.1 client below; the
output says which. Bundles always use the asyncio client: at a few requests per second
wrk's count of completions in a fixed duration is off by up to one request per client,
whereas the asyncio client (and the psycopg baseline) sum each client's rate over whole
requests, measured once every client has had its first answer. Hub and baseline take
turns (--rounds, default 2: hub, baseline, hub, baseline) so that both sides of a ratio
see the same background load; the output gives the ratio of each round too.

    .venv/bin/python bench/rest.py [--duration 10] [--workers 1] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
from common import (
    HOST,
    Server,
    checkpoint,
    drop_database,
    exchange,
    free_port,
    http_get,
    idle_share,
    libpq_url,
    raw_request,
    recreate_database,
    revision,
    scratch,
    start_hub,
)

BENCH_DIR = Path(__file__).resolve().parent
FHIR_JSON = "application/fhir+json; charset=utf-8"
DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/hub_bench"
BASELINE_DATA_ENV = "BENCH_BASELINE_DATA"
SYSTEM_PATH = "/fhir"  # where transaction Bundles go (POST [base])


# --- the workload ----------------------------------------------------------------------------


# With --references, each Patient names its GP and their organisation (created first): what
# referential integrity costs a write that holds references.
REFERENCE_TARGETS = (
    {"resourceType": "Organization", "id": "bench-org", "name": "Bench Clinic"},
    {"resourceType": "Practitioner", "id": "bench-gp", "name": [{"family": "Bench"}]},
)
references: list[dict[str, str]] = []


def patient(n: int) -> dict[str, Any]:
    """A Patient of about 500 bytes, like the ones an EHR feed creates."""
    extra = {"generalPractitioner": list(references)} if references else {}
    return {
        **extra,
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": f"MRN{n:08d}"}],
        "active": True,
        "name": [{"use": "official", "family": f"Chalmers{n}", "given": ["Peter", "James"]}],
        "telecom": [{"system": "phone", "value": "(03) 5555 6473", "use": "work"}],
        "gender": "male",
        "birthDate": "1974-12-25",
        "address": [
            {
                "use": "home",
                "line": ["534 Erewhon St"],
                "city": "PleasantVille",
                "state": "Vic",
                "postalCode": "3999",
                "country": "AU",
            }
        ],
    }


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def transaction_bundle(start: int, size: int) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{uuid.UUID(int=start + i)}",
                "resource": patient(start + i),
                "request": {"method": "POST", "url": "Patient"},
            }
            for i in range(size)
        ],
    }


# --- results ---------------------------------------------------------------------------------


@dataclass
class Run:
    """One measured stretch of one side: operations, the seconds they are worth, latencies.

    `latencies` holds (seconds, weight) pairs: one per operation, or for wrk one per
    half-percentile of its histogram, weighted so that stretches can be merged.
    """

    ops: int
    seconds: float
    errors: int
    latencies: list[tuple[float, float]]

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0


def from_spans(per_client: Sequence[Sequence[tuple[float, float]]], errors: int) -> Run:
    """Closed-loop throughput as the sum of each client's own rate over whole requests.

    A client's rate is the number of requests it started in the window over the time from
    the first one's start to the last one's end. Counting completions inside a fixed window
    instead would be off by up to one request per client, which matters when requests take
    seconds (Bundles) and the clients tend to finish together.
    """
    rate = 0.0
    latencies: list[float] = []
    for spans in per_client:
        if spans:
            rate += len(spans) / max(1e-9, spans[-1][1] - spans[0][0])
            latencies.extend(end - begin for begin, end in spans)
    ops = len(latencies)
    return Run(ops, ops / rate if rate else 0.0, errors, [(x, 1.0) for x in latencies])


def percentile(pairs: Sequence[tuple[float, float]], p: float) -> float:
    ordered = sorted(pairs)
    goal = p * sum(w for _, w in ordered)
    seen = 0.0
    for value, weight in ordered:
        seen += weight
        if seen >= goal:
            return value
    return ordered[-1][0] if ordered else 0.0


@dataclass(frozen=True)
class Measured:
    """Every round of one side of a figure, merged."""

    ops: int
    seconds: float
    p50_ms: float
    p95_ms: float
    errors: int
    client: str
    round_rates: tuple[float, ...]

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0


def merge(runs: Sequence[Run], client: str) -> Measured:
    pairs = [pair for run in runs for pair in run.latencies]
    return Measured(
        sum(r.ops for r in runs),
        sum(r.seconds for r in runs),
        percentile(pairs, 0.50) * 1000,
        percentile(pairs, 0.95) * 1000,
        sum(r.errors for r in runs),
        client,
        tuple(r.rate for r in runs),
    )


@dataclass(frozen=True)
class Figure:
    name: str
    unit: str
    rows_per_op: int
    target: float
    hub: Measured
    baseline: Measured
    # The hub's own rows written by raw SQL (writes only): the most any hub code could do.
    ceiling: Measured | None = None

    @property
    def ceiling_ratio(self) -> float | None:
        if self.ceiling is None or not self.baseline.rate:
            return None
        return self.ceiling.rate / self.baseline.rate

    @property
    def ratio(self) -> float:
        return self.hub.rate / self.baseline.rate if self.baseline.rate else 0.0

    @property
    def round_ratios(self) -> tuple[float, ...]:
        pairs = zip(self.hub.round_rates, self.baseline.round_rates, strict=True)
        return tuple(h / b if b else 0.0 for h, b in pairs)

    @property
    def met(self) -> bool:
        return self.ratio >= self.target and not self.hub.errors and not self.baseline.errors


def alternate(rounds: int, warmup: float, *sides: Callable[[float], Run]) -> list[list[Run]]:
    """Hub, baseline, hub, baseline...: every side sees the same background load and drift.

    The first round of each side warms up for `warmup` seconds, later ones for one second.
    """
    runs: list[list[Run]] = [[] for _ in sides]
    for n in range(rounds):
        settle = warmup if n == 0 else min(warmup, 1.0)
        for side, out in zip(sides, runs, strict=True):
            out.append(side(settle))
    return runs


# --- processes -------------------------------------------------------------------------------


def http_post(url: str, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": FHIR_JSON}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return int(response.status), response.read()


def http_put(port: int, path: str, resource: dict[str, Any]) -> None:
    request = urllib.request.Request(
        f"http://{HOST}:{port}{path}",
        data=dumps(resource),
        method="PUT",
        headers={"Content-Type": FHIR_JSON},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()


def uvicorn_options(port: int, workers: int) -> list[str]:
    """What `hub serve` passes to uvicorn (its defaults otherwise), for the baseline."""
    return [
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        "--no-access-log",
    ]


def start_baseline(data: Path, workers: int, tmp: Path) -> Server:
    port = free_port()
    env = {**os.environ, BASELINE_DATA_ENV: str(data)}
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "rest:baseline_app",
        "--factory",
        "--app-dir",
        str(BENCH_DIR),
        *uvicorn_options(port, workers),
    ]
    server = Server("baseline", argv, port, tmp / "baseline.log", env)
    server.wait_ready()
    return server


def baseline_app() -> Any:
    """The read baseline: a bare FastAPI endpoint answering stored bytes from a dict."""
    from fastapi import FastAPI, Response

    raw = json.loads(Path(os.environ[BASELINE_DATA_ENV]).read_text())
    contents = {key: value.encode() for key, value in raw.items()}
    app = FastAPI()

    @app.get("/fhir/Patient/{resource_id}")
    async def read(resource_id: str) -> Response:
        content = contents.get(resource_id)
        if content is None:
            return Response(status_code=404)
        return Response(content, media_type=FHIR_JSON)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


# --- the database ----------------------------------------------------------------------------


def create_raw_tables(url: str) -> None:
    """The baselines' bare tables."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        for table in ("raw_create", "raw_bundle"):
            conn.execute(f"CREATE TABLE {table} (id text PRIMARY KEY, content bytea NOT NULL)")


def count_rows(url: str, table: str) -> int:
    with psycopg.connect(libpq_url(url)) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0


def closed_loop(
    url: str,
    clients: int,
    warmup: float,
    duration: float,
    commit: Callable[[psycopg.Connection[Any], psycopg.Cursor[Any]], None],
) -> Run:
    """`clients` threads on their own connections, each calling `commit` as fast as it can."""
    spans: list[list[tuple[float, float]]] = [[] for _ in range(clients)]
    conns = [psycopg.connect(libpq_url(url)) for _ in range(clients)]
    start = time.perf_counter() + 0.1
    window = (start + warmup, start + warmup + duration)

    def work(conn: psycopg.Connection[Any], out: list[tuple[float, float]]) -> None:
        with conn.cursor() as cur:
            while time.perf_counter() < start:
                time.sleep(0.001)
            while (t0 := time.perf_counter()) < window[1]:
                commit(conn, cur)
                if t0 >= window[0]:
                    out.append((t0, time.perf_counter()))

    threads = [
        threading.Thread(target=work, args=(c, out)) for c, out in zip(conns, spans, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in conns:
        c.close()
    return from_spans(spans, 0)


def raw_inserts(
    url: str, table: str, clients: int, rows: Sequence[bytes], warmup: float, duration: float
) -> Run:
    """The baseline: `rows` per commit into a bare table (executemany when more than one)."""
    sql = f"INSERT INTO {table} (id, content) VALUES (%s, %s)"

    def commit(conn: psycopg.Connection[Any], cur: psycopg.Cursor[Any]) -> None:
        if len(rows) == 1:
            cur.execute(sql, (str(uuid.uuid4()), rows[0]))
        else:
            cur.executemany(sql, [(str(uuid.uuid4()), row) for row in rows])
        conn.commit()

    return closed_loop(url, clients, warmup, duration, commit)


def hub_rows(resources: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The rows the hub stores for these new resources: current, history and index rows.

    Built with the hub's own stamping and index extraction (shipped search parameters).
    """
    from hub.interactions.writes import content_hash, now, stamp
    from hub.search.extract import extract
    from hub.search.registry import load_default

    registry = load_default()
    rows: dict[str, list[dict[str, Any]]] = {"resources": [], "resource_history": []}
    for resource in resources:
        rid, at = str(uuid.uuid4()), now()
        stamped = stamp(resource, rid, 1, at)
        current = {
            "res_type": stamped["resourceType"],
            "res_id": rid,
            "version_id": 1,
            "last_updated": at,
            "deleted": False,
            "content_hash": content_hash(stamped),
            "content": dumps(stamped),
        }
        rows["resources"].append(current)
        rows["resource_history"].append({**current, "method": "POST"})
        for table, index_rows in extract(registry, stamped).items():
            rows.setdefault(table, []).extend(index_rows)
    return rows


def raw_hub_rows(
    url: str,
    clients: int,
    resources: Sequence[dict[str, Any]],
    warmup: float,
    duration: float,
) -> Run:
    """The ceiling: the rows the hub stores for `resources`, written per commit by raw psycopg
    the way the hub writes them (COPY for a table of many rows, one pipeline of executemany
    for the others), fresh ids each time: the database's share of the hub's writes, with no
    HTTP, validation, extraction or SQLAlchemy in the way.
    """
    from hub.store.sql import insert_rows

    template = hub_rows(resources)
    columns = {table: list(rows[0]) for table, rows in template.items() if rows}

    def commit(conn: psycopg.Connection[Any], cur: psycopg.Cursor[Any]) -> None:
        fresh: dict[str, str] = {}  # the template's ids -> this commit's
        insert_rows(
            conn,
            {
                table: (
                    cols,
                    [
                        tuple(
                            fresh.setdefault(row[c], str(uuid.uuid4())) if c == "res_id" else row[c]
                            for c in cols
                        )
                        for row in template[table]
                    ],
                )
                for table, cols in columns.items()
            },
        )
        conn.commit()

    return closed_loop(url, clients, warmup, duration, commit)


# --- HTTP load -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """Closed-loop HTTP load: `clients` connections, each sending the next request at once."""

    method: str
    paths: Sequence[str]
    body: bytes | None
    clients: int


async def _asyncio_load(port: int, load: Load, warmup: float, duration: float, ok: int) -> Run:
    """Closed loop; the window opens after `warmup` and once every client has had an answer.

    Waiting for every client's first answer keeps slow requests (a Bundle can take seconds)
    from being measured before the server is in its steady state, whatever --warmup says.
    """
    requests = [raw_request(load.method, p, load.body) for p in load.paths]
    start = time.perf_counter() + 0.2
    window = [float("inf"), float("inf")]
    spans: list[list[tuple[float, float]]] = [[] for _ in range(load.clients)]
    errors = 0
    answered: set[int] = set()
    primed = asyncio.Event()

    async def client(n: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        i = n * max(1, len(requests) // load.clients)
        while (t0 := time.perf_counter()) < window[1]:
            status, _ = await exchange(reader, writer, requests[i % len(requests)])
            i += 1
            if t0 >= window[0]:
                spans[n].append((t0, time.perf_counter()))
                errors += status != ok
            answered.add(n)
            if len(answered) == load.clients:
                primed.set()
        writer.close()

    async def open_window() -> None:
        await primed.wait()
        await asyncio.sleep(max(0.0, start + warmup - time.perf_counter()))
        window[0] = time.perf_counter()
        window[1] = window[0] + duration

    await asyncio.gather(open_window(), *(client(n) for n in range(load.clients)))
    return from_spans(spans, errors)


def asyncio_load(port: int, load: Load, warmup: float, duration: float, ok: int) -> Run:
    try:
        import uvloop

        runner: Callable[..., Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    result: Run = runner(_asyncio_load(port, load, warmup, duration, ok))
    return result


_WRK_SCRIPT = """\
local paths = {%(paths)s}
local method = "%(method)s"
local headers = {["Content-Type"] = "%(content_type)s", ["Accept"] = "application/fhir+json"}
local body = nil
if "%(body)s" ~= "" then
  local f = assert(io.open("%(body)s", "rb"))
  body = f:read("*a")
  f:close()
end
local i = 0
setup = function(thread) thread:set("offset", math.random(#paths)) end
request = function()
  i = i + 1
  return wrk.format(method, paths[((i + (offset or 0)) %% #paths) + 1], headers, body)
end
done = function(summary, latency, requests)
  local e = summary.errors
  local points = {}
  for p = 0.25, 99.75, 0.5 do points[#points + 1] = latency:percentile(p) end
  io.write(string.format(
    "BENCH {\\"requests\\":%%d,\\"duration_us\\":%%d,\\"errors\\":%%d,"
    .. "\\"percentiles_us\\":[%%s]}\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    table.concat(points, ",")))
end
"""


def wrk_load(wrk: str, port: int, load: Load, warmup: float, duration: float, tmp: Path) -> Run:
    """wrk's own count and latency histogram; a response of status 400 or more is an error."""
    body = ""
    if load.body is not None:
        body_file = tmp / f"body-{uuid.uuid4().hex}.json"
        body_file.write_bytes(load.body)
        body = str(body_file)
    script = tmp / f"load-{uuid.uuid4().hex}.lua"
    script.write_text(
        _WRK_SCRIPT
        % {
            "paths": ",".join(f'"{p}"' for p in load.paths),
            "method": load.method,
            "content_type": FHIR_JSON,
            "body": body,
        }
    )
    url = f"http://{HOST}:{port}"
    base = [wrk, "-t1", f"-c{load.clients}", "--timeout", "60s", "-s", str(script)]
    if warmup > 0:
        subprocess.run([*base, f"-d{warmup:g}s", url], check=True, capture_output=True)
    out = subprocess.run(
        [*base, f"-d{duration:g}s", url], check=True, capture_output=True, text=True
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("BENCH "))
    r = json.loads(line.removeprefix("BENCH "))
    points = [x / 1e6 for x in r["percentiles_us"]]
    weight = r["requests"] / max(1, len(points))
    return Run(r["requests"], r["duration_us"] / 1e6, r["errors"], [(x, weight) for x in points])


class Loader:
    def __init__(self, client: str, tmp: Path, duration: float) -> None:
        self.wrk = shutil.which("wrk") if client in ("auto", "wrk") else None
        if client == "wrk" and self.wrk is None:
            raise SystemExit("--client wrk: wrk is not on PATH (apt-get install wrk)")
        self.tmp, self.duration = tmp, duration

    @property
    def name(self) -> str:
        return f"wrk ({self.wrk})" if self.wrk else "asyncio HTTP/1.1 client (wrk not found)"

    def client(self, allow_wrk: bool = True) -> str:
        return "wrk" if self.wrk and allow_wrk else "asyncio"

    def run(self, port: int, load: Load, ok: int, warmup: float, allow_wrk: bool = True) -> Run:
        if self.wrk and allow_wrk:
            return wrk_load(self.wrk, port, load, warmup, self.duration, self.tmp)
        return asyncio_load(port, load, warmup, self.duration, ok)


# --- the figures -----------------------------------------------------------------------------


def seed_patients(hub: Server, url: str, count: int) -> dict[str, str]:
    """Create `count` Patients through the API; return their stored JSON by id."""
    for start in range(0, count, 100):
        status, _ = http_post(hub.base + SYSTEM_PATH, dumps(transaction_bundle(start, 100)))
        if status != 200:
            raise SystemExit(f"seeding failed with status {status}")
    with psycopg.connect(libpq_url(url)) as conn:
        rows = conn.execute(
            "SELECT res_id, content FROM resources WHERE res_type = 'Patient'"
        ).fetchall()
    return {rid: bytes(content).decode() for rid, content in rows}


def figure_reads(args: argparse.Namespace, loader: Loader, hub: Server, tmp: Path) -> Figure:
    stored = seed_patients(hub, args.database_url, args.patients)
    data = tmp / "patients.json"
    data.write_text(json.dumps(stored))
    baseline = start_baseline(data, args.workers, tmp)
    try:
        some = next(iter(stored))
        path = f"/fhir/Patient/{some}"
        if http_get(hub.base + path)[1] != http_get(baseline.base + path)[1]:
            raise SystemExit("the baseline does not serve the hub's bytes")
        load = Load("GET", [f"/fhir/Patient/{i}" for i in stored], None, args.read_clients)
        checkpoint(args.database_url)
        on_hub, on_baseline = alternate(
            args.rounds,
            args.warmup,
            lambda w: loader.run(hub.port, load, 200, w),
            lambda w: loader.run(baseline.port, load, 200, w),
        )
    finally:
        baseline.stop()
    client = loader.client()
    return Figure(
        f"read by id, {args.read_clients} clients",
        "reads/s",
        1,
        0.60,
        merge(on_hub, client),
        merge(on_baseline, client),
    )


def figure_creates(args: argparse.Namespace, loader: Loader, hub: Server) -> Figure:
    body = dumps(patient(0))
    load = Load("POST", ["/fhir/Patient"], body, args.create_clients)
    duration = loader.duration

    def on_hub(warmup: float) -> Run:
        checkpoint(args.database_url)
        before = count_rows(args.database_url, "resources")
        run = loader.run(hub.port, load, 201, warmup)
        stored = count_rows(args.database_url, "resources") - before
        if stored < run.ops:
            raise SystemExit(f"the hub answered {run.ops} creates but stored {stored}")
        return run

    def on_baseline(warmup: float) -> Run:
        checkpoint(args.database_url)
        url, clients = args.database_url, args.create_clients
        return raw_inserts(url, "raw_create", clients, [body], warmup, duration)

    def on_ceiling(warmup: float) -> Run:
        checkpoint(args.database_url)
        url, clients = args.database_url, args.create_clients
        return raw_hub_rows(url, clients, [patient(0)], warmup, duration)

    hub_runs, baseline_runs, ceiling_runs = alternate(
        args.rounds, args.warmup, on_hub, on_baseline, on_ceiling
    )
    return Figure(
        f"create, {args.create_clients} clients",
        "creates/s",
        1,
        0.50,
        merge(hub_runs, loader.client()),
        merge(baseline_runs, "psycopg threads"),
        merge(ceiling_runs, "psycopg threads"),
    )


def figure_bundles(args: argparse.Namespace, loader: Loader, hub: Server) -> Figure:
    size = args.bundle_size
    bundle = transaction_bundle(0, size)
    rows = [dumps(e["resource"]) for e in bundle["entry"]]
    load = Load("POST", [SYSTEM_PATH], dumps(bundle), args.bundle_clients)
    duration = loader.duration

    def on_hub(warmup: float) -> Run:
        checkpoint(args.database_url)
        return loader.run(hub.port, load, 200, warmup, allow_wrk=False)

    def on_baseline(warmup: float) -> Run:
        checkpoint(args.database_url)
        url, clients = args.database_url, args.bundle_clients
        return raw_inserts(url, "raw_bundle", clients, rows, warmup, duration)

    def on_ceiling(warmup: float) -> Run:
        checkpoint(args.database_url)
        url, clients = args.database_url, args.bundle_clients
        resources = [e["resource"] for e in bundle["entry"]]
        return raw_hub_rows(url, clients, resources, warmup, duration)

    hub_runs, baseline_runs, ceiling_runs = alternate(
        args.rounds, args.warmup, on_hub, on_baseline, on_ceiling
    )
    return Figure(
        f"{size}-entry transaction, {args.bundle_clients} clients",
        "bundles/s",
        size,
        0.25,
        merge(hub_runs, loader.client(allow_wrk=False)),
        merge(baseline_runs, "psycopg threads"),
        merge(ceiling_runs, "psycopg threads"),
    )


# --- report ----------------------------------------------------------------------------------


def report(figures: Sequence[Figure]) -> str:
    head = (
        f"{'figure':<34} {'hub/s':>9} {'p50 ms':>8} {'p95 ms':>8} | {'base/s':>9} "
        f"{'p50 ms':>8} {'p95 ms':>8} | {'ratio':>6} {'target':>6}  result"
    )
    lines = [head, "-" * len(head)]
    for f in figures:
        h, b = f.hub, f.baseline
        result = "met" if f.met else "MISSED"
        if h.errors or b.errors:
            result += f" ({h.errors} hub / {b.errors} baseline errors)"
        lines.append(
            f"{f.name:<34} {h.rate:>9.1f} {h.p50_ms:>8.2f} {h.p95_ms:>8.2f} | {b.rate:>9.1f} "
            f"{b.p50_ms:>8.2f} {b.p95_ms:>8.2f} | {f.ratio:>6.1%} {f.target:>6.0%}  {result}"
        )
        if f.rows_per_op > 1:
            lines.append(
                f"{'  (resources/s)':<34} {h.rate * f.rows_per_op:>9.1f} {'':>17} | "
                f"{b.rate * f.rows_per_op:>9.1f}"
            )
        if len(f.round_ratios) > 1:
            each = ", ".join(f"{r:.1%}" for r in f.round_ratios)
            lines.append(f"{'  (ratio by round)':<34} {each}")
        if f.ceiling is not None and f.ceiling_ratio is not None:
            c = f.ceiling
            lines.append(
                f"{'  (hub rows by raw SQL: ceiling)':<34} {c.rate:>9.1f} {c.p50_ms:>8.2f} "
                f"{c.p95_ms:>8.2f} | {'':>28} | {f.ceiling_ratio:>6.1%}"
            )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--duration", type=float, default=10.0, help="measured seconds per side of a figure"
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="hub and baseline take turns this many times; --duration is split among them",
    )
    p.add_argument(
        "--warmup", type=float, default=3.0, help="unmeasured seconds before each side's first"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="uvicorn workers, for the hub and the read baseline alike",
    )
    p.add_argument(
        "--database-url",
        default=DEFAULT_URL,
        help="bench database: DROPPED and recreated (its name must contain 'bench')",
    )
    p.add_argument(
        "--client",
        choices=("auto", "wrk", "asyncio"),
        default="auto",
        help="HTTP load generator: wrk when on PATH (auto), or the asyncio client",
    )
    p.add_argument("--only", default="reads,creates,bundles", help="comma-separated figures to run")
    p.add_argument("--patients", type=int, default=1000, help="Patients read in figure 1")
    p.add_argument("--read-clients", type=int, default=32)
    p.add_argument("--create-clients", type=int, default=8)
    p.add_argument("--bundle-clients", type=int, default=8)
    p.add_argument("--bundle-size", type=int, default=100)
    p.add_argument(
        "--references",
        action="store_true",
        help="created Patients carry two references (to resources created first)",
    )
    p.add_argument("--keep-database", action="store_true", help="leave the bench database")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0:
        p.error("--rounds must be at least 1 and --duration positive")
    args.database_url = args.database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    wanted = {x.strip() for x in args.only.split(",") if x.strip()}
    unknown = wanted - {"reads", "creates", "bundles"}
    if unknown:
        raise SystemExit(f"--only: unknown figures {sorted(unknown)}")
    with scratch() as tmp:
        loader = Loader(args.client, tmp, args.duration / args.rounds)
        print(
            f"machine: {os.cpu_count()} CPUs; uvicorn workers: {args.workers}; per side "
            f"{args.duration:g} s measured in {args.rounds} alternating round(s), "
            f"after {args.warmup:g} s warm-up",
            flush=True,
        )
        print(f"HTTP load: {loader.name} (transaction Bundles: asyncio client)", flush=True)
        print(f"database: {args.database_url.split('@')[-1]} (recreated)", flush=True)
        idle = idle_share()
        print(f"code: {revision()}; CPU idle before start: {idle:.0%}", flush=True)
        if idle < 0.9:
            print("warning: something else is using the CPU; the figures will be noisy", flush=True)
        recreate_database(args.database_url)
        create_raw_tables(args.database_url)
        hub = start_hub(args.database_url, args.workers, tmp / "hub.log")
        print(f"hub pid {hub.proc.pid} on port {hub.port}", flush=True)
        if args.references:
            for target in REFERENCE_TARGETS:
                http_put(hub.port, f"/fhir/{target['resourceType']}/{target['id']}", target)
                references.append({"reference": f"{target['resourceType']}/{target['id']}"})
            print("created Patients reference an Organization and a Practitioner", flush=True)
        figures: list[Figure] = []
        try:
            runs: dict[str, Callable[[], Figure]] = {
                "reads": lambda: figure_reads(args, loader, hub, tmp),
                "creates": lambda: figure_creates(args, loader, hub),
                "bundles": lambda: figure_bundles(args, loader, hub),
            }
            for name, run in runs.items():
                if name in wanted:
                    figures.append(run())
                    print("\n".join(report(figures[-1:]).splitlines()[2:]), flush=True)
        finally:
            hub.stop()
            if not args.keep_database:
                drop_database(args.database_url)
    print()
    print(report(figures))
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {
                        **asdict(f),
                        "ratio": f.ratio,
                        "met": f.met,
                        "hub_rate": f.hub.rate,
                        "baseline_rate": f.baseline.rate,
                        "round_ratios": f.round_ratios,
                        "ceiling_ratio": f.ceiling_ratio,
                    }
                    for f in figures
                ],
                indent=2,
            )
        )
    return 1 if args.check and not all(f.met for f in figures) else 0


if __name__ == "__main__":
    sys.exit(main())
