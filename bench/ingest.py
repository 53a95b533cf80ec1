"""Ingestion benchmark of fhir-hub: CSV rows per second, file to searchable FHIR resources.

1. Data: a seeded, synthetic Synthea-style export in a temporary folder: patients.csv
   (--patients rows) and observations.csv (--rows rows: LOINC vital signs, labs and a
   smoking-status survey, a few per encounter, every patient's rows together and in date
   order, as Synthea writes them; --shuffle mixes them), and encounters.csv: one
   Encounter for each encounter the observations refer to.
2. Hub, per mode, each on a freshly recreated database (--database-url, default
   hub_bench_ingest on the local server, migrated with `hub db upgrade`):
   - celery-N (one per --workers entry): one `hub worker --concurrency N` process
     (--worker-processes: N `hub worker --concurrency 1` processes instead), Redis as the
     broker (--broker-url: a database number of its own, which must be empty) and
     `hub beat` (--no-beat: none), whose sweeper sends again what a Redis restart lost.
     A run during which the Redis server restarted (its run_id changed) is measured
     again (--attempts);
   - embedded: no broker, `hub ingest` processes inline in its own process (for reference).
   patients.csv is ingested first the same way (reported, not part of the figure), then
   encounters.csv (an observation whose encounter has not arrived would wait). Then,
   timed: `hub ingest --adapter csv --mapping synthea-observations observations.csv`
   (--no-wait with a broker: its exit is the end of the commit of the raw messages), until
   every message is `done` (the messages table is polled every 0.1 s) and a search through
   `hub serve` finds every Observation: `Observation?code=http://loinc.org|X&_summary=count`
   for every code must add up to --rows, and `Observation?subject=Patient/P` must count
   each of a few sampled patients' rows. rows/s = rows / (searchable - start).
   `hub serve` runs with the broker set, so it never works the store itself.
3. Baseline, right after each hub run, on the same database: the same file read with
   csv.DictReader, each row mapped with hub.ingest.mapping.Mapper (the very Observations the
   hub stored: checked, content for content, minus meta) and inserted as JSON into a bare
   table (id text primary key, content bytea) with executemany, 500 rows and one commit per
   batch. Its rows/s counts all of it (read, map, serialise, insert); the insert alone is
   reported too. Target: hub/baseline >= 25 %.
4. Ceiling, after each baseline (--no-ceiling: none): every row the hub stored for both
   files (messages, resources, history, search index, lineage), inserted again by raw
   psycopg into an empty copy of the schema, 500 CSV rows' share a commit. No ingestion
   that stores these rows can beat it; its ratio to the baseline bounds the reachable one.

HUB_INGEST_BATCH in the bench's environment is passed on to the hub (other HUB_* variables
are not). CPU seconds used during the timed part are reported for the worker processes, the
database's server processes that served this database and the `hub ingest` process.

    .venv/bin/python bench/ingest.py [--rows 20000] [--patients 2000] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
import redis
from common import (
    HOST,
    ROOT,
    Server,
    checkpoint,
    drop_database,
    free_port,
    http_get,
    idle_share,
    libpq_url,
    recreate_database,
    revision,
    scratch,
)

HUB = str(Path(sys.executable).with_name("hub"))
DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/hub_bench_ingest"
DEFAULT_BROKER = "redis://127.0.0.1:6379/11"
OBSERVATIONS = "synthea-observations"
PATIENTS = "synthea-patients"
ENCOUNTERS = "synthea-encounters"
BATCH = 500
TARGET = 0.25
OPEN = ("received", "processing")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- the data --------------------------------------------------------------------------------

PATIENT_COLUMNS = (
    "Id",
    "BIRTHDATE",
    "DEATHDATE",
    "SSN",
    "DRIVERS",
    "PASSPORT",
    "PREFIX",
    "FIRST",
    "MIDDLE",
    "LAST",
    "SUFFIX",
    "MAIDEN",
    "MARITAL",
    "RACE",
    "ETHNICITY",
    "GENDER",
    "BIRTHPLACE",
    "ADDRESS",
    "CITY",
    "STATE",
    "COUNTY",
    "FIPS",
    "ZIP",
    "LAT",
    "LON",
    "HEALTHCARE_EXPENSES",
    "HEALTHCARE_COVERAGE",
    "INCOME",
)
ENCOUNTER_COLUMNS = (
    "Id",
    "START",
    "STOP",
    "PATIENT",
    "ORGANIZATION",
    "PROVIDER",
    "PAYER",
    "ENCOUNTERCLASS",
    "CODE",
    "DESCRIPTION",
    "BASE_ENCOUNTER_COST",
    "TOTAL_CLAIM_COST",
    "PAYER_COVERAGE",
    "REASONCODE",
    "REASONDESCRIPTION",
)
OBSERVATION_COLUMNS = (
    "DATE",
    "PATIENT",
    "ENCOUNTER",
    "CATEGORY",
    "CODE",
    "DESCRIPTION",
    "VALUE",
    "UNITS",
    "TYPE",
)


@dataclass(frozen=True)
class Code:
    category: str
    code: str
    description: str
    units: str
    low: float
    high: float
    decimals: int


CODES = (
    Code("vital-signs", "8302-2", "Body Height", "cm", 50, 200, 1),
    Code("vital-signs", "29463-7", "Body Weight", "kg", 3, 140, 1),
    Code("vital-signs", "39156-5", "Body Mass Index", "kg/m2", 14, 45, 2),
    Code("vital-signs", "8867-4", "Heart rate", "/min", 50, 120, 0),
    Code("vital-signs", "9279-1", "Respiratory rate", "/min", 10, 25, 0),
    Code("vital-signs", "8480-6", "Systolic Blood Pressure", "mm[Hg]", 95, 180, 0),
    Code("vital-signs", "8462-4", "Diastolic Blood Pressure", "mm[Hg]", 55, 110, 0),
    Code(
        "vital-signs", "72514-3", "Pain severity - 0-10 verbal numeric rating", "{score}", 0, 10, 0
    ),
    Code("laboratory", "2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", 60, 200, 2),
    Code(
        "laboratory", "2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 120, 300, 1
    ),
    Code("laboratory", "2571-8", "Triglycerides", "mg/dL", 50, 400, 1),
    Code("laboratory", "4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4, 11, 1),
)
SMOKING = Code("survey", "72166-2", "Tobacco smoking status", "", 0, 0, 0)
SMOKING_VALUES = (
    "Never smoked tobacco (finding)",
    "Ex-smoker (finding)",
    "Current every day smoker (finding)",
)
LOINC = tuple(c.code for c in (*CODES, SMOKING))
FIRST = ("Damon455", "Shelly431", "Raymond398", "Karyn217", "Jon32", "Ana", "Luis94")
LAST = ("Langosh790", "Mante251", "Kuhlman484", "Mueller68", "Heller342", "Ortiz186")
CITIES = (
    ("Springfield", "Hampden County", "01104"),
    ("Worcester", "Worcester County", "01605"),
    ("Lowell", "Middlesex County", "01850"),
    ("Boston", "Suffolk County", "02118"),
)


def seeded_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def patient_rows(rng: random.Random, count: int) -> list[list[str]]:
    rows = []
    for _ in range(count):
        gender = rng.choice("MF")
        birth = datetime(1930, 1, 1) + timedelta(days=rng.randrange(365 * 90))
        city, county, zip_code = rng.choice(CITIES)
        row = {
            "Id": seeded_uuid(rng),
            "BIRTHDATE": birth.strftime("%Y-%m-%d"),
            "SSN": f"999-{rng.randrange(10, 99)}-{rng.randrange(1000, 9999)}",
            "PREFIX": "Mr." if gender == "M" else "Ms.",
            "FIRST": rng.choice(FIRST),
            "LAST": rng.choice(LAST),
            "MARITAL": rng.choice("MSDW"),
            "RACE": "white",
            "ETHNICITY": "nonhispanic",
            "GENDER": gender,
            "BIRTHPLACE": "Boston  Massachusetts  US",
            "ADDRESS": f"{rng.randrange(1, 999)} Main Street",
            "CITY": city,
            "STATE": "Massachusetts",
            "COUNTY": county,
            "ZIP": zip_code,
            "LAT": f"{42 + rng.random():.6f}",
            "LON": f"{-72 + rng.random():.6f}",
            "HEALTHCARE_EXPENSES": f"{rng.uniform(1000, 900000):.2f}",
            "HEALTHCARE_COVERAGE": f"{rng.uniform(0, 90000):.2f}",
            "INCOME": str(rng.randrange(20000, 150000)),
        }
        rows.append([row.get(c, "") for c in PATIENT_COLUMNS])
    return rows


def observation_rows(rng: random.Random, patients: Sequence[str], count: int) -> list[list[str]]:
    """`count` rows, spread evenly over `patients`: a few codes per encounter, dates rising.

    (PATIENT, DATE, CODE) is unique, so every row makes its own Observation.
    """
    rows = []
    for n, patient in enumerate(patients):
        quota = count // len(patients) + (1 if n < count % len(patients) else 0)
        at = datetime(2010, 1, 1, tzinfo=UTC) + timedelta(minutes=rng.randrange(60 * 24 * 365))
        while quota > 0:
            encounter = seeded_uuid(rng)
            picked = rng.sample((*CODES, SMOKING), k=min(quota, rng.randint(3, 8)))
            date = at.strftime("%Y-%m-%dT%H:%M:%SZ")
            for code in picked:
                if code is SMOKING:
                    value, units, kind = rng.choice(SMOKING_VALUES), "", "text"
                else:
                    number = rng.uniform(code.low, code.high)
                    value = f"{number:.{code.decimals}f}"
                    units, kind = code.units, "numeric"
                rows.append(
                    [
                        date,
                        patient,
                        encounter,
                        code.category,
                        code.code,
                        code.description,
                        value,
                        units,
                        kind,
                    ]
                )
            quota -= len(picked)
            at += timedelta(days=rng.randint(30, 400), minutes=rng.randrange(24 * 60))
    return rows


def encounter_rows(observations: Sequence[Sequence[str]]) -> list[list[str]]:
    """One wellness visit per encounter the observations name: an observation whose
    encounter has not arrived waits for it, and the timed part is to measure writes."""
    seen: dict[str, list[str]] = {}
    for date, patient, encounter, *_ in observations:
        if encounter not in seen:
            row = {
                "Id": encounter,
                "START": date,
                "STOP": date,
                "PATIENT": patient,
                "ENCOUNTERCLASS": "wellness",
                "CODE": "162673000",
                "DESCRIPTION": "General examination of patient (procedure)",
            }
            seen[encounter] = [row.get(c, "") for c in ENCOUNTER_COLUMNS]
    return list(seen.values())


@dataclass(frozen=True)
class Dataset:
    patients_csv: Path
    encounters_csv: Path
    observations_csv: Path
    patients: int
    encounters: int
    rows: int
    by_code: dict[str, int]
    by_patient: dict[str, int]  # a few sampled patients: their Observation count


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def generate(folder: Path, patients: int, rows: int, seed: int, shuffle: bool) -> Dataset:
    rng = random.Random(seed)
    people = patient_rows(rng, patients)
    ids = [p[0] for p in people]
    observations = observation_rows(rng, ids, rows)
    if shuffle:
        rng.shuffle(observations)
    encounters = encounter_rows(observations)
    write_csv(folder / "patients.csv", PATIENT_COLUMNS, people)
    write_csv(folder / "encounters.csv", ENCOUNTER_COLUMNS, encounters)
    write_csv(folder / "observations.csv", OBSERVATION_COLUMNS, observations)
    by_code = {code: 0 for code in LOINC}
    by_patient: dict[str, int] = {}
    for row in observations:
        by_code[row[4]] += 1
        by_patient[row[1]] = by_patient.get(row[1], 0) + 1
    sample = rng.sample(ids, k=min(5, len(ids)))
    return Dataset(
        folder / "patients.csv",
        folder / "encounters.csv",
        folder / "observations.csv",
        patients,
        len(encounters),
        rows,
        {c: n for c, n in by_code.items() if n},
        {p: by_patient[p] for p in sample},
    )


# --- processes and CPU -----------------------------------------------------------------------


# Passed on to the hub from the bench's environment (the other HUB_* variables are not).
PASSED_ON = ("HUB_INGEST_BATCH",)


def hub_env(url: str, broker: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_") or k in PASSED_ON}
    env["HUB_DATABASE_URL"] = url
    if broker:
        env["HUB_BROKER_URL"] = broker
    return env


def start_serve(url: str, broker: str, tmp: Path) -> Server:
    """`hub serve` for the searches; with the broker set it runs no sweeper of its own."""
    port = free_port()
    argv = [
        HUB,
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
        "--log-level",
        "warning",
    ]
    server = Server("hub serve", argv, port, tmp / "serve.log", hub_env(url, broker))
    server.wait_ready()
    return server


def start_workers(url: str, broker: str, n: int, processes: bool, tmp: Path) -> list[Server]:
    """`hub worker --concurrency n`, or n of `--concurrency 1`; back once all are ready."""
    shapes = [1] * n if processes else [n]
    workers = []
    for i, concurrency in enumerate(shapes):
        argv = [HUB, "worker", "--concurrency", str(concurrency), "--loglevel", "info"]
        log = tmp / f"worker-{n}-{i}.log"
        workers.append(Server(f"worker {i}", argv, 0, log, hub_env(url, broker)))
    deadline = time.monotonic() + 60
    for w in workers:
        while "ready." not in w.log.read_text(errors="replace"):
            if w.proc.poll() is not None or time.monotonic() > deadline:
                stop_all(workers)
                raise SystemExit(f"{w.name} did not start:\n{w.log.read_text()[-2000:]}")
            time.sleep(0.1)
    return workers


def stop_all(servers: Sequence[Server]) -> None:
    for s in servers:
        s.stop()


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                pids.append(int(entry.name))
    return pids


def cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
    """User + system CPU seconds of each live process (its own threads, not its children)."""
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def backend_pids(conn: psycopg.Connection[Any]) -> list[int]:
    """The server processes of the other connections to this database."""
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid()"
    ).fetchall()
    return [int(r[0]) for r in rows]


class CpuMeter:
    """CPU seconds used from start() on by the worker processes and the database's backends.

    Sampled at start(), at every sample() (the completion poll, every 0.1 s) and at stop():
    a backend that came and went between samples is counted up to its last sample, one born
    after start() from zero.
    """

    def __init__(self, conn: psycopg.Connection[Any], workers: Sequence[Server]) -> None:
        self.conn, self.workers = conn, workers
        self.first: dict[str, dict[int, float]] = {}
        self.last: dict[str, dict[int, float]] = {"workers": {}, "postgres": {}}

    def _read(self) -> dict[str, dict[int, float]]:
        pids = [p for w in self.workers for p in group_pids(w.proc.pid)]
        return {"workers": cpu_seconds(pids), "postgres": cpu_seconds(backend_pids(self.conn))}

    def start(self) -> None:
        self.first = self._read()

    def sample(self) -> None:
        for key, now in self._read().items():
            self.last[key].update(now)

    def used(self) -> dict[str, float]:
        self.sample()
        return {
            key: sum(v - self.first[key].get(pid, 0.0) for pid, v in last.items())
            for key, last in self.last.items()
        }


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# --- the hub ---------------------------------------------------------------------------------


@dataclass
class HubRun:
    mode: str
    rows: int
    committed: float | None  # seconds from the start until `hub ingest` returned (broker)
    done: float  # ... until every message was done
    searchable: float  # ... until the searches found every row
    patients_rate: float
    cpu: dict[str, float] = field(default_factory=dict)
    deferred: int = 0  # Celery retries of a message waiting for an earlier one (worker logs)
    resent: int = 0  # messages the sweeper sent again (worker logs)

    @property
    def rate(self) -> float:
        return self.rows / self.searchable


def message_counts(conn: psycopg.Connection[Any], mapping: str) -> dict[str, int]:
    rows = conn.execute(
        "SELECT status, count(*) FROM messages WHERE mapping = %s GROUP BY status", (mapping,)
    ).fetchall()
    return {str(s): int(n) for s, n in rows}


@dataclass(frozen=True)
class Ingested:
    committed: float | None  # seconds until `hub ingest` returned (with a broker)
    done: float  # seconds until every message was done
    cpu: dict[str, float]  # CPU seconds: workers, postgres backends, the `hub ingest` process


def ingest(
    url: str,
    broker: str | None,
    workers: Sequence[Server],
    mapping: str,
    file: Path,
    rows: int,
    tmp: Path,
    timeout: float,
) -> Ingested:
    """Run `hub ingest` on `file` and wait until every one of its `rows` messages is done."""
    argv = [HUB, "ingest", "--adapter", "csv", "--mapping", mapping]
    argv += ["--no-wait", str(file)] if broker else [str(file)]
    log_path = tmp / f"ingest-{mapping}.log"
    with psycopg.connect(libpq_url(url), autocommit=True) as conn, log_path.open("wb") as log:
        meter = CpuMeter(conn, workers)
        meter.start()
        cpu0 = children_cpu()
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=hub_env(url, broker), stdout=log, stderr=subprocess.STDOUT
        )
        committed: float | None = None
        while True:
            meter.sample()
            if committed is None and proc.poll() is not None:
                committed = time.perf_counter() - start
                if proc.returncode != 0:
                    text = log_path.read_text(errors="replace")[-3000:]
                    raise SystemExit(f"hub ingest failed ({proc.returncode}):\n{text}")
            if committed is not None:
                counts = message_counts(conn, mapping)
                if sum(counts.values()) >= rows and not any(counts.get(s) for s in OPEN):
                    done = time.perf_counter() - start
                    bad = {s: n for s, n in counts.items() if s != "done"}
                    if bad:
                        raise SystemExit(f"{mapping}: messages not done: {bad}")
                    break
            if time.perf_counter() - start > timeout:
                proc.kill()
                raise SystemExit(f"{mapping}: not processed within {timeout:g} s")
            time.sleep(0.1)
        cpu = {**meter.used(), "hub ingest": children_cpu() - cpu0}
    return Ingested(committed if broker else None, done, cpu)


def search_total(base: str, query: str) -> int:
    status, body = http_get(
        f"{base}/fhir/Observation?{query}&_summary=count&_total=accurate", timeout=60
    )
    if status != 200:
        raise SystemExit(f"search {query} answered {status}")
    return int(json.loads(body)["total"])


def searchable(base: str, data: Dataset, timeout: float = 60) -> None:
    """Every row is found by a token search on its code, and by its patient's reference."""
    deadline = time.monotonic() + timeout
    while True:
        by_code = {c: search_total(base, f"code=http://loinc.org|{c}") for c in data.by_code}
        by_patient = {
            p: search_total(base, f"subject=Patient/{patient_id(p)}") for p in data.by_patient
        }
        if by_code == data.by_code and by_patient == data.by_patient:
            return
        if time.monotonic() > deadline:
            raise SystemExit(
                f"searches found {sum(by_code.values())} of {data.rows} rows "
                f"(by patient {by_patient}, expected {data.by_patient})"
            )
        time.sleep(0.1)


def patient_id(patient: str) -> str:
    """The Patient id the synthea-patients mapping gives this Synthea Id."""
    from hub.ingest.mapping import resource_id

    return resource_id("synthea", "Patient", [patient])


def worker_log_counts(workers: Sequence[Server]) -> tuple[int, int]:
    """Celery retries of deferred messages, and messages the sweeper sent again."""
    text = "".join(w.log.read_text(errors="replace") for w in workers)
    resent = sum(int(n) for n in re.findall(r"sweeper re-sent (\d+) messages", text))
    return text.count("Retry in"), resent


def broker_run_id(broker: str) -> str:
    """Changes when the Redis server restarts (which loses every queued task)."""
    return str(redis.Redis.from_url(broker).info("server")["run_id"])


def start_beat(url: str, broker: str, tmp: Path) -> Server:
    return Server(
        "beat", [HUB, "beat", "--loglevel", "info"], 0, tmp / "beat.log", hub_env(url, broker)
    )


class BrokerRestarted(Exception):
    pass


def run_hub(
    args: argparse.Namespace, mode: str, n: int, data: Dataset, tmp: Path, broker: str
) -> HubRun:
    url = args.database_url
    recreate_database(url)
    flush(broker)
    serve = start_serve(url, broker, tmp)
    workers: list[Server] = []
    extra: list[Server] = []
    celery = mode != "embedded"
    try:
        if celery:
            workers = start_workers(url, broker, n, args.worker_processes, tmp)
            if args.beat:
                extra.append(start_beat(url, broker, tmp))
        via = broker if celery else None
        patients = ingest(
            url, via, workers, PATIENTS, data.patients_csv, data.patients, tmp, args.timeout
        )
        ingest(
            url, via, workers, ENCOUNTERS, data.encounters_csv, data.encounters, tmp, args.timeout
        )
        checkpoint(url)
        retries, resent = worker_log_counts(workers)
        run_id = broker_run_id(broker)
        start = time.perf_counter()
        observations = ingest(
            url, via, workers, OBSERVATIONS, data.observations_csv, data.rows, tmp, args.timeout
        )
        searchable(serve.base, data)
        end = time.perf_counter() - start
        if celery and broker_run_id(broker) != run_id:
            raise BrokerRestarted(f"{mode}: the Redis server restarted during the run")
        retries_after, resent_after = worker_log_counts(workers)
    finally:
        stop_all([*extra, *workers])
        serve.stop()
        flush(broker)
    return HubRun(
        mode,
        data.rows,
        observations.committed,
        observations.done,
        end,
        data.patients / patients.done,
        observations.cpu,
        retries_after - retries,
        resent_after - resent,
    )


def flush(broker: str) -> None:
    """Empty our Redis database (checked empty at the start: it is ours alone)."""
    redis.Redis.from_url(broker).flushdb()


# --- the baseline ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BaselineRun:
    rows: int
    seconds: float
    insert_seconds: float

    @property
    def rate(self) -> float:
        return self.rows / self.seconds

    @property
    def insert_rate(self) -> float:
        return self.rows / self.insert_seconds


def run_baseline(url: str, data: Dataset) -> BaselineRun:
    """CSV -> Mapper -> JSON -> executemany into a bare table, 500 rows a commit."""
    from hub.ingest.mapping import Mapper, load_mapping

    mapper = Mapper(load_mapping(ROOT / "mappings" / "csv" / f"{OBSERVATIONS}.yaml"))
    sql = "INSERT INTO raw_ingest (id, content) VALUES (%s, %s)"
    with psycopg.connect(libpq_url(url)) as conn:
        conn.execute("DROP TABLE IF EXISTS raw_ingest")
        conn.execute("CREATE TABLE raw_ingest (id text PRIMARY KEY, content bytea NOT NULL)")
        conn.commit()
        checkpoint(url)
        inserting = 0.0
        start = time.perf_counter()
        with data.observations_csv.open(newline="", encoding="utf-8") as f, conn.cursor() as cur:
            batch: list[tuple[str, bytes]] = []
            for record in csv.DictReader(f):
                batch += [(r["id"], orjson.dumps(r)) for r in mapper.map(record).resources]
                if len(batch) >= BATCH:
                    t = time.perf_counter()
                    cur.executemany(sql, batch)
                    conn.commit()
                    inserting += time.perf_counter() - t
                    batch = []
            if batch:
                t = time.perf_counter()
                cur.executemany(sql, batch)
                conn.commit()
                inserting += time.perf_counter() - t
        seconds = time.perf_counter() - start
    return BaselineRun(data.rows, seconds, inserting)


def same_resources(url: str) -> int:
    """The hub's Observations are the baseline's rows, content for content (minus meta)."""
    with psycopg.connect(libpq_url(url)) as conn:
        hub = {
            rid: orjson.loads(content)
            for rid, content in conn.execute(
                "SELECT res_id, content FROM resources WHERE res_type = 'Observation'"
            )
        }
        raw = {
            rid: orjson.loads(content)
            for rid, content in conn.execute("SELECT id, content FROM raw_ingest")
        }
    for body in hub.values():
        body.pop("meta", None)
    if hub != raw:
        missing = len(raw.keys() - hub.keys())
        differ = sum(1 for k in raw.keys() & hub.keys() if raw[k] != hub[k])
        raise SystemExit(
            f"the baseline's rows differ from the hub's Observations: {missing} "
            f"missing in the hub, {len(hub.keys() - raw.keys())} extra, "
            f"{differ} different"
        )
    return len(hub)


# --- the ceiling -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CeilingRun:
    csv_rows: int  # the units the rows were stored for (CSV rows, HL7 v2 messages)
    stored_rows: int
    seconds: float
    client_cpu: float = 0.0  # CPU seconds of this process while it inserted
    server_cpu: float = 0.0  # CPU seconds of the PostgreSQL backend that inserted

    @property
    def rate(self) -> float:
        return self.csv_rows / self.seconds

    @property
    def cpu_per_unit(self) -> float:
        return (self.client_cpu + self.server_cpu) / self.csv_rows


def run_ceiling(url: str, data: Dataset, keep: bool) -> CeilingRun:
    """The ceiling of a CSV run: see `copy_ceiling`."""
    return copy_ceiling(url, data.rows + data.patients + data.encounters, keep)


def copy_ceiling(url: str, units: int, keep: bool, per_commit: int = BATCH) -> CeilingRun:
    """The rows the hub stored for `units` units, inserted again by raw psycopg: the ceiling.

    Every row of every table a message writes (the message, resources, history, search
    index, lineage; Provenance included), as the hub left them, goes into an empty copy of
    the schema the way the hub writes a batch (COPY for a table of many rows, one pipeline of
    executemany for the others), one commit per `per_commit` units' share, on one
    connection, like the baseline. Only inserts, none of the hub's status updates or reads.
    """
    target = url.rsplit("/", 1)[0] + "/" + url.rsplit("/", 1)[1] + "_ceiling"
    recreate_database(target)
    from hub.store.schema import INDEX_TABLES
    from hub.store.sql import insert_rows

    # Every table a feed message writes to.
    stored = ("messages", "resources", "resource_history", "lineage", *INDEX_TABLES)
    rows: dict[str, tuple[list[str], list[tuple[Any, ...]]]] = {}
    with psycopg.connect(libpq_url(url)) as conn:
        for table in stored:
            cur = conn.execute(f"SELECT * FROM {table}")
            rows[table] = ([d.name for d in cur.description or ()], cur.fetchall())
    batches = max(1, -(-units // per_commit))
    try:
        checkpoint(target)
        with psycopg.connect(libpq_url(target)) as conn:
            backend = int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]
            server_before = cpu_seconds([backend]).get(backend, 0.0)
            client_before = time.process_time()
            start = time.perf_counter()
            for i in range(batches):
                # As the hub writes a batch (`insert_rows`): each table's share of this one.
                insert_rows(
                    conn,
                    {
                        table: (names, values[n * i // batches : n * (i + 1) // batches])
                        for table, (names, values) in rows.items()
                        for n in [len(values)]
                    },
                )
                conn.commit()
            seconds = time.perf_counter() - start
            client = time.process_time() - client_before
            server = cpu_seconds([backend]).get(backend, 0.0) - server_before
    finally:
        if not keep:
            drop_database(target)
    return CeilingRun(units, sum(len(v) for _, v in rows.values()), seconds, client, server)


# --- report ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    hub: HubRun
    baseline: BaselineRun
    ceiling: CeilingRun | None = None

    @property
    def ceiling_ratio(self) -> float | None:
        return self.ceiling.rate / self.baseline.rate if self.ceiling else None

    @property
    def ratio(self) -> float:
        return self.hub.rate / self.baseline.rate

    @property
    def insert_ratio(self) -> float:
        return self.hub.rate / self.baseline.insert_rate


def report(results: Sequence[Result]) -> str:
    head = (
        f"{'mode':<18} {'commit s':>8} {'done s':>8} {'search s':>8} {'rows/s':>8} | "
        f"{'base/s':>8} {'insert/s':>8} | {'ratio':>6} {'target':>6}  result"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        h, b = r.hub, r.baseline
        committed = f"{h.committed:.1f}" if h.committed is not None else "inline"
        met = "met" if r.ratio >= TARGET else "MISSED"
        if h.mode == "embedded":
            met = "(reference)"
        lines.append(
            f"{h.mode:<18} {committed:>8} {h.done:>8.1f} {h.searchable:>8.1f} {h.rate:>8.1f} | "
            f"{b.rate:>8.0f} {b.insert_rate:>8.0f} | {r.ratio:>6.1%} {TARGET:>6.0%}  {met}"
        )
    lines.append("")
    lines.append(
        "ratio = hub rows/s / baseline rows/s (baseline: read + map + serialise + "
        "insert); against the insert alone: "
        + ", ".join(f"{r.hub.mode} {r.insert_ratio:.2%}" for r in results)
    )
    for r in results:
        c = r.ceiling
        if c is not None and r.ceiling_ratio is not None:
            lines.append(
                f"{r.hub.mode}: ceiling (the {c.stored_rows:,} rows the hub stored for "
                f"{c.csv_rows:,} CSV rows, inserted by raw psycopg) {c.rate:.0f} CSV rows/s = "
                f"{r.ceiling_ratio:.1%} of the baseline; the hub reached "
                f"{r.hub.rate / c.rate:.0%} of it"
            )
    for r in results:
        h = r.hub
        shown = {k: v for k, v in h.cpu.items() if k != "workers" or h.mode != "embedded"}
        cpu = ", ".join(f"{k} {v:.1f} s" for k, v in shown.items())
        per_row = sum(h.cpu.values()) / h.rows * 1000
        lines.append(
            f"{h.mode}: CPU {cpu} ({per_row:.2f} ms a row); patients.csv "
            f"{h.patients_rate:.0f} rows/s; deferred retries {h.deferred}; "
            f"re-sent by the sweeper {h.resent}"
        )
    return "\n".join(lines)


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    with psycopg.connect(libpq_url(DEFAULT_URL.rsplit("/", 1)[0] + "/postgres")) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return (
        f"{os.cpu_count()} CPUs ({model}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, PostgreSQL {row[0] if row else '?'}"
    )


def hub_location() -> str:
    """Where the `hub` processes import the hub from (PYTHONPATH may point elsewhere)."""
    probe = subprocess.run(
        [sys.executable, "-c", "import hub, os; print(os.path.dirname(hub.__file__))"],
        capture_output=True,
        text=True,
        cwd="/",
    )
    return probe.stdout.strip() or "?"


def parse_workers(value: str) -> list[int]:
    try:
        out = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("a comma-separated list of worker counts") from None
    if any(n < 1 for n in out):
        raise argparse.ArgumentTypeError("worker counts are at least 1")
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--rows", type=int, default=20_000, help="observations.csv rows")
    p.add_argument("--patients", type=int, default=2_000, help="patients.csv rows")
    p.add_argument(
        "--workers",
        type=parse_workers,
        default=[1, 2],
        help="Celery worker concurrencies to measure, e.g. 1,2 (empty: none)",
    )
    p.add_argument(
        "--worker-processes",
        action="store_true",
        help="N `hub worker --concurrency 1` processes instead of one with N",
    )
    p.add_argument(
        "--no-embedded",
        dest="embedded",
        action="store_false",
        help="skip the embedded (no broker) reference run",
    )
    p.add_argument(
        "--no-ceiling",
        dest="ceiling",
        action="store_false",
        help="skip the ceiling (the hub's stored rows inserted again by raw psycopg)",
    )
    p.add_argument(
        "--no-beat",
        dest="beat",
        action="store_false",
        help="run no beat: a task lost (a Redis restart) is then never sent again",
    )
    p.add_argument(
        "--shuffle",
        action="store_true",
        help="mix the observation rows instead of keeping each patient's together",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--database-url",
        default=DEFAULT_URL,
        help="bench database: DROPPED and recreated (its name must contain 'bench')",
    )
    p.add_argument(
        "--broker-url",
        default=DEFAULT_BROKER,
        help="Celery broker: a Redis database of its own (must be empty; emptied after each run)",
    )
    p.add_argument(
        "--attempts",
        type=int,
        default=3,
        help="tries per mode: a run during which Redis restarted is measured again",
    )
    p.add_argument("--timeout", type=float, default=3600, help="seconds allowed per file")
    p.add_argument(
        "--keep", action="store_true", help="leave the last run's database and the temporary folder"
    )
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    args.database_url = args.database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    if args.rows < 1 or args.patients < 1 or args.rows < args.patients:
        p.error("--rows and --patients must be positive, with --rows at least --patients")
    return args


@contextmanager
def workspace(keep: bool) -> Iterator[Path]:
    """A temporary folder for the data and the logs: removed at the end unless kept."""
    if keep:
        path = Path(tempfile.mkdtemp(prefix="hub-bench-ingest-"))
        print(f"data and logs kept in {path}", flush=True)
        yield path
    else:
        with scratch() as path:
            yield path


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # A plain kill stops the bench like Ctrl-C: its workers and servers are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    broker = args.broker_url
    if redis.Redis.from_url(broker).dbsize():
        raise SystemExit(
            f"{broker} is not empty: choose another database with --broker-url "
            "(this bench empties the one it uses)"
        )
    modes = [(f"celery-{n}" + ("x1" if args.worker_processes else ""), n) for n in args.workers]
    if args.embedded:
        modes.append(("embedded", 0))
    command = " ".join(["bench/ingest.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"command: .venv/bin/python {command}", flush=True)
    print(f"machine: {machine()}", flush=True)
    idle = idle_share()
    print(
        f"code: {revision()} (hub imported from {hub_location()}); CPU idle before start: "
        f"{idle:.0%}",
        flush=True,
    )
    if idle < 0.9:
        print("warning: something else is using the CPU; the figures will be noisy", flush=True)
    shape = (
        "--worker-processes (N x --concurrency 1)"
        if args.worker_processes
        else ("one `hub worker --concurrency N`")
    )
    print(f"celery-N: {shape}; broker {broker}; beat: {'yes' if args.beat else 'no'}", flush=True)
    passed = {k: os.environ[k] for k in PASSED_ON if k in os.environ}
    if passed:
        print(f"hub settings from the environment: {passed}", flush=True)
    results: list[Result] = []
    with workspace(args.keep) as tmp:
        data = generate(tmp, args.patients, args.rows, args.seed, args.shuffle)
        order = "shuffled" if args.shuffle else "grouped by patient, in date order"
        print(
            f"data: {data.patients} patients, {data.rows} observation rows ({order}), "
            f"seed {args.seed}, in {tmp}",
            flush=True,
        )
        try:
            for mode, n in modes:
                for attempt in range(1, args.attempts + 1):
                    try:
                        hub = run_hub(args, mode, n, data, tmp, broker)
                        break
                    except BrokerRestarted as e:
                        print(f"{e}: its tasks were lost (attempt {attempt})", flush=True)
                else:
                    raise SystemExit(f"{mode}: Redis restarted during every attempt")
                base = run_baseline(args.database_url, data)
                same_resources(args.database_url)
                ceiling = run_ceiling(args.database_url, data, args.keep) if args.ceiling else None
                results.append(Result(hub, base, ceiling))
                print("\n".join(report(results[-1:]).splitlines()[2:3]), flush=True)
        finally:
            if not args.keep:
                drop_database(args.database_url)
    print()
    print(report(results))
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "hub": r.hub.__dict__ | {"rate": r.hub.rate},
                        "baseline": r.baseline.__dict__
                        | {"rate": r.baseline.rate, "insert_rate": r.baseline.insert_rate},
                        "ratio": r.ratio,
                        "insert_ratio": r.insert_ratio,
                        "ceiling": r.ceiling.__dict__ | {"rate": r.ceiling.rate}
                        if r.ceiling
                        else None,
                        "ceiling_ratio": r.ceiling_ratio,
                    }
                    for r in results
                ],
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
