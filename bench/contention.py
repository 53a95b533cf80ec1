"""Contention benchmark of fhir-hub: a burst of conditional creates with one If-None-Exist,
and the unrelated requests answered meanwhile, against the same requests on a quiet hub.

60 clients POST the same Patient with the same `If-None-Exist` for 15 s, each sending its
next request as soon as it has an answer (a 503 is counted, and the client goes on without
waiting its Retry-After: the harshest burst). Alongside, 4 other clients send unrelated
reads in turn: a read by id and a search (`Patient?gender=...&_count=10`). The
baseline is the same unrelated clients against the same hub in the same run with no burst;
the ratio of their p99 latencies says what the burst costs everyone else.

Targets: unrelated requests' p99 under 100 ms during the burst, no conditional create
slower than 5 s, exactly one Patient stored for the criteria, and no answer other than
201, 200 or 503 with Retry-After.

The bench drops and recreates its own database (--database-url, default hub_bench_contention
on the local server), migrates it and serves it with `hub serve` at its default settings
(--workers, default 1). The burst runs in a process of its own so that the unrelated
clients' timings are not those of the burst's event loop.

    .venv/bin/python bench/contention.py [--duration 15] [--clients 60] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common import (
    HOST,
    drop_database,
    exchange,
    idle_share,
    raw_request,
    recreate_database,
    revision,
    scratch,
    start_hub,
)

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/hub_bench_contention"
FHIR_JSON = "application/fhir+json"
GENDERS = ("male", "female", "other", "unknown")
P99_TARGET_MS = 100.0
SLOWEST_CREATE_TARGET_S = 5.0


# --- a minimal HTTP/1.1 keep-alive client --------------------------------------------------


def run_loop(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


async def closed_loop(
    port: int, requests: Sequence[bytes], clients: int, duration: float
) -> list[tuple[float, int, bool]]:
    """`clients` connections sending `requests` in turn for `duration` seconds: each answer's
    (seconds, status, Retry-After present); a dropped connection counts as status 0."""
    out: list[tuple[float, int, bool]] = []
    end = time.perf_counter() + duration

    async def client(n: int) -> None:
        reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
        i = n
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            try:
                status, retry_after = await exchange(reader, writer, requests[i % len(requests)])
            except (OSError, asyncio.IncompleteReadError):
                out.append((time.perf_counter() - t0, 0, False))
                writer.close()
                reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
                continue
            out.append((time.perf_counter() - t0, status, retry_after))
            i += 1
        writer.close()

    await asyncio.gather(*(client(n) for n in range(clients)))
    return out


def _burst(port: int, criteria: str, body: bytes, clients: int, duration: float, q: Any) -> None:
    request = raw_request("POST", "/fhir/Patient", body, f"If-None-Exist: {criteria}\r\n")
    q.put(run_loop(closed_loop(port, [request], clients, duration)))


# --- figures ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Latencies:
    count: int
    p50_ms: float
    p99_ms: float
    slowest_ms: float
    statuses: dict[str, int]

    @staticmethod
    def of(answers: Sequence[tuple[float, int, bool]]) -> Latencies:
        times = sorted(t for t, _, _ in answers) or [0.0]

        def at(p: float) -> float:
            return times[min(len(times) - 1, int(p * len(times)))] * 1000

        statuses = Counter(
            f"{s}" + ("" if s != 503 else " Retry-After" if r else " without Retry-After")
            for _, s, r in answers
        )
        return Latencies(len(answers), at(0.50), at(0.99), times[-1] * 1000, dict(statuses))


def seed(root: str, count: int) -> list[str]:
    """Patients for the unrelated reads; their ids."""
    ids = []
    for n in range(count):
        body = json.dumps(
            {"resourceType": "Patient", "gender": GENDERS[n % 4], "name": [{"family": f"S{n}"}]}
        ).encode()
        req = urllib.request.Request(
            f"{root}/fhir/Patient",
            body,
            {"Content-Type": FHIR_JSON, "Prefer": "return=representation"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            ids.append(json.loads(r.read())["id"])
    return ids


def stored(root: str, criteria: str) -> int:
    query = urllib.parse.urlencode([*urllib.parse.parse_qsl(criteria), ("_total", "accurate")])
    with urllib.request.urlopen(f"{root}/fhir/Patient?{query}", timeout=60) as r:
        return int(json.loads(r.read())["total"])


def unrelated_requests(ids: Sequence[str]) -> list[bytes]:
    """Reads by id (answered on the event loop) and searches (on request threads) in turn."""
    out = []
    for n, pid in enumerate(ids):
        out.append(raw_request("GET", f"/fhir/Patient/{pid}"))
        out.append(raw_request("GET", f"/fhir/Patient?gender={GENDERS[n % 4]}&_count=10"))
    return out


def measure(args: argparse.Namespace, port: int, root: str, ids: Sequence[str]) -> dict[str, Any]:
    reads = unrelated_requests(ids)
    print(f"quiet: {args.read_clients} unrelated clients for {args.duration:g} s", flush=True)
    quiet = Latencies.of(run_loop(closed_loop(port, reads, args.read_clients, args.duration)))
    uid = uuid.uuid4().hex
    criteria = f"identifier=urn:bench|{uid}"
    body = json.dumps(
        {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:bench", "value": uid}],
            "name": [{"family": "Burst"}],
        }
    ).encode()
    print(
        f"burst: {args.clients} clients of one conditional create and the same unrelated "
        f"clients for {args.duration:g} s",
        flush=True,
    )
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    burst = ctx.Process(
        target=_burst, args=(port, criteria, body, args.clients, args.duration, q), daemon=True
    )
    burst.start()
    during = Latencies.of(run_loop(closed_loop(port, reads, args.read_clients, args.duration)))
    creates = Latencies.of(q.get(timeout=args.duration + 600))
    burst.join(60)
    count = stored(root, criteria)
    errors = sum(
        n for s, n in creates.statuses.items() if s not in ("201", "200", "503 Retry-After")
    )
    errors += sum(n for s, n in during.statuses.items() if s != "200")
    met = {
        "unrelated p99 < 100 ms": during.p99_ms < P99_TARGET_MS,
        "slowest create <= 5 s": creates.slowest_ms <= SLOWEST_CREATE_TARGET_S * 1000,
        "exactly one stored": count == 1,
        "no errors": errors == 0,
    }
    return {
        "quiet": asdict(quiet),
        "during": asdict(during),
        "creates": asdict(creates),
        "ratio_p99": during.p99_ms / quiet.p99_ms if quiet.p99_ms else None,
        "stored": count,
        "errors": errors,
        "met": met,
    }


def report(result: dict[str, Any]) -> str:
    q, d, c = result["quiet"], result["during"], result["creates"]
    lines = [
        "| requests | answered | p50 ms | p99 ms | slowest ms | statuses |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, x in (
        ("unrelated, quiet hub (baseline)", q),
        ("unrelated, during the burst", d),
        ("conditional creates (the burst)", c),
    ):
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(x["statuses"].items()))
        lines.append(
            f"| {name} | {x['count']:,} | {x['p50_ms']:.1f} | {x['p99_ms']:.1f} "
            f"| {x['slowest_ms']:.1f} | {statuses} |"
        )
    ratio = result["ratio_p99"]
    lines.append("")
    lines.append(
        f"unrelated p99 during the burst / quiet: {ratio:.2f}x; Patients stored for the "
        f"criteria: {result['stored']}; errors: {result['errors']}"
        if ratio is not None
        else f"Patients stored: {result['stored']}; errors: {result['errors']}"
    )
    for target, ok in result["met"].items():
        lines.append(f"- {target}: {'met' if ok else 'MISSED'}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--duration", type=float, default=15.0, help="seconds of each phase")
    p.add_argument("--clients", type=int, default=60, help="clients of the conditional create")
    p.add_argument("--read-clients", type=int, default=4, help="clients of unrelated requests")
    p.add_argument("--patients", type=int, default=200, help="Patients the unrelated reads use")
    p.add_argument("--workers", type=int, default=1, help="uvicorn workers of the hub")
    p.add_argument(
        "--database-url",
        default=DEFAULT_URL,
        help="bench database: DROPPED and recreated (its name must contain 'bench')",
    )
    p.add_argument(
        "--code",
        type=Path,
        help="serve the hub from this checkout instead (another commit, for a before figure)",
    )
    p.add_argument("--keep-database", action="store_true", help="leave the bench database")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = p.parse_args(argv)
    args.database_url = args.database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"machine: {os.cpu_count()} CPUs; uvicorn workers: {args.workers}; "
        f"database: {args.database_url.split('@')[-1]} (recreated)",
        flush=True,
    )
    idle = idle_share()
    code = revision() if args.code is None else f"{args.code} (--code)"
    print(f"code: {code}; CPU idle before start: {idle:.0%}", flush=True)
    if idle < 0.9:
        print("warning: something else is using the CPU; the figures will be noisy", flush=True)
    recreate_database(args.database_url)
    with scratch() as tmp:
        cwd = args.code.resolve() if args.code else Path(__file__).resolve().parent.parent
        hub = start_hub(args.database_url, args.workers, tmp / "hub.log", cwd)
        try:
            root = hub.base
            ids = seed(root, args.patients)
            result = measure(args, hub.port, root, ids)
        finally:
            hub.stop()
            if not args.keep_database:
                drop_database(args.database_url)
    print()
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 1 if args.check and not all(result["met"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
