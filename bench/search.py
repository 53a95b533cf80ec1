"""Search benchmark of fhir-hub: each query shape against one hand-written SQL query, same run.

1. Loader: a synthetic, seeded population of --patients Patients (default 100,000), each with
   2 Encounters, 2 Conditions and 5-6 Observations (LOINC codes, valueQuantity, effective
   dates over 2015-2024, subject and encounter references): about 10.5 resources a patient.
   It writes exactly the rows the hub writes for a create (the body stamped by
   `hub.interactions.writes.stamp`, hashed by `content_hash`, indexed by
   `hub.search.extract` with the hub's own registry; `resources`, `resource_history` and the
   `search_*` tables) but in bulk: 2 processes generate and extract, each streaming binary
   COPY into PostgreSQL; secondary indexes are dropped during the load and rebuilt from
   their own definitions after it, then VACUUM (ANALYZE).
2. Queries: each shape runs --runs times with varying parameters over HTTP against
   `hub serve` (1 worker) on that database, one request at a time, and the same lookup as
   ONE hand-written SQL query (same page, same contents, same total) on the same tables in
   the same run, in alternating order after a warm-up. The hub's and the SQL's answers are
   compared on every run. p50/p95 of each, and their ratio.
3. --explain: EXPLAIN (ANALYZE, BUFFERS) of every statement the hub runs for each shape
   (captured in-process through the same interaction code the API calls) and of the hand
   SQL, with the indexes each plan uses.

The database (--database-url; by default hub_bench_search on the local server, or
hub_bench_search_N for --patients N other than 100,000) is dropped, recreated, migrated with
`hub db upgrade` and loaded, unless --reuse finds it already holding the same population
(patients, seed, generator version) or --skip-load is given.

    .venv/bin/python bench/search.py --reuse                  # 100,000 patients, ~1M resources
    .venv/bin/python bench/search.py --reuse --patients 2000  # quick check
    .venv/bin/python bench/search.py --reuse --explain --no-measure   # query plans
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import http.client
import itertools
import multiprocessing as mp
import os
import platform
import random
import re
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import orjson
import psycopg
from common import HOST, ROOT, Server, libpq_url, recreate_database, start_hub

if str(ROOT) not in sys.path:  # run as a script from anywhere: the hub is importable
    sys.path.insert(0, str(ROOT))

from hub.fhir.references import targets
from hub.interactions.writes import content_hash, stamp
from hub.search.extract import extract
from hub.search.registry import Registry, load_default
from hub.settings import Settings
from hub.store.schema import INDEX_TABLES, outbound_reference, resource_history, resources

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/hub_bench_search"
DEFAULT_PATIENTS = 100_000
DEFAULT_SEED = 20261124
# Bump when the generated population changes, so that --reuse reloads.
GENERATOR_VERSION = 1
MARKER_TABLE = "bench_search_population"
# Without _total the hub counts up to this many matches (its default setting).
TOTAL_LIMIT = int(Settings.model_fields["search_total_limit"].default)
BASE_PATH = "/fhir"

# --- the population --------------------------------------------------------------------------

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
MRN = "urn:mrn"
SSN = "http://hl7.org/fhir/sid/us-ssn"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
COND_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
FIRST_DAY = datetime(2015, 1, 1, tzinfo=UTC)
SPAN_SECONDS = int((datetime(2025, 1, 1, tzinfo=UTC) - FIRST_DAY).total_seconds())
# meta.lastUpdated of patient n's j-th resource: fixed, so content and hashes are reproducible.
STAMPED_FROM = datetime(2025, 6, 1, tzinfo=UTC)


def _words(text: str) -> list[str]:
    return text.split()


# US census 2010 frequencies (per 100,000) of common surnames, a few rarer ones that share
# their prefixes, and accented ones (search is accent-insensitive).
SURNAMES: dict[str, float] = {
    "Smith": 828, "Johnson": 655, "Williams": 550, "Brown": 488, "Jones": 481, "Garcia": 466,
    "Miller": 424, "Davis": 393, "Rodriguez": 349, "Martinez": 342, "Hernandez": 338,
    "Lopez": 287, "Gonzalez": 281, "Wilson": 267, "Anderson": 262, "Thomas": 253,
    "Taylor": 251, "Moore": 242, "Jackson": 240, "Martin": 240, "Lee": 229, "Perez": 226,
    "Thompson": 225, "White": 224, "Harris": 217, "Sanchez": 210, "Clark": 199,
    "Ramirez": 198, "Lewis": 193, "Robinson": 192, "Walker": 188, "Young": 176, "Allen": 175,
    "King": 174, "Wright": 172, "Scott": 162, "Torres": 159, "Nguyen": 157, "Hill": 156,
    "Flores": 155, "Green": 155, "Adams": 153, "Nelson": 152, "Baker": 150, "Hall": 147,
    "Rivera": 142, "Campbell": 142, "Mitchell": 141, "Carter": 140, "Roberts": 140,
    "Smithson": 4, "Smithers": 3, "Smits": 3, "Smiley": 9, "Johnston": 70, "Johns": 38,
    "Garner": 37, "Garrett": 52, "Martinelli": 5, "Müller": 6, "Núñez": 12, "Peña": 30,
    "Schäfer": 2, "Öztürk": 2,
}  # fmt: skip
ONSETS = _words(
    "Al Bar Ber Bo Bra Bri Bu Ca Car Cha Che Chr Co Cra Cu Da De Di Do Dra Du El Em Er Fa Fe "
    "Fi Fo Fra Fu Ga Ge Gi Go Gra Gre Gu Ha He Hi Ho Hu Ja Je Jo Ka Ke Ki Ko Kra La Le Li Lo "
    "Lu Ma Me Mi Mo Mu Na Ne Ni No Nu Pa Pe Pi Po Pra Pu Qui Ra Re Ri Ro Ru Sa Se Sha She Si "
    "So Sta Ste Su Ta Te Ti To Tra Tu Va Ve Vi Vo Wa We Wi Wo Ya Yo Za Ze Zo"
)
MIDDLES = _words("b d k l m n r s t v z lb nd rk st")
CODAS = _words(
    "a ack ard berg by den el er ez ford ham ik in ins is ley lo man mer nik ov ski son ton"
)
GIVEN_FEMALE = _words(
    "Mary Patricia Jennifer Linda Elizabeth Barbara Susan Jessica Sarah Karen Lisa Nancy Betty "
    "Sandra Margaret Ashley Kimberly Emily Donna Michelle Carol Amanda Melissa Deborah "
    "Stephanie Dorothy Rebecca Sharon Laura Cynthia Amy Kathleen Angela Shirley Brenda Emma "
    "Anna Pamela Nicole Samantha Katherine Christine Helen Debra Rachel Carolyn Janet Maria "
    "Olivia Heather Chloé Zoë"
)
GIVEN_MALE = _words(
    "James Robert John Michael David William Richard Joseph Thomas Christopher Charles Daniel "
    "Matthew Anthony Mark Donald Steven Andrew Paul Joshua Kenneth Kevin Brian George Timothy "
    "Ronald Jason Edward Jeffrey Ryan Jacob Gary Nicholas Eric Jonathan Stephen Larry Justin "
    "Scott Brandon Benjamin Samuel Gregory Alexander Patrick Frank Raymond Jack Dennis José "
    "André"
)
CITIES = _words(
    "Springfield Riverside Franklin Greenville Bristol Clinton Fairview Salem Madison "
    "Georgetown Arlington Ashland Dover Oxford Jackson Burlington Manchester Milton Newport "
    "Auburn Dayton Lexington Milford Winchester Hudson Kingston Vernon Clayton"
)
STREETS = _words("Main Oak Pine Maple Cedar Elm Washington Lake Hill Park View Church Mill")


@dataclass(frozen=True)
class Lab:
    code: str
    display: str
    unit: str
    ucum: str
    mean: float
    sd: float
    decimals: int
    category: str
    weight: float


LABS = (
    Lab("8867-4", "Heart rate", "beats/minute", "/min", 76, 12, 0, "vital-signs", 10),
    Lab("8480-6", "Systolic blood pressure", "mmHg", "mm[Hg]", 124, 16, 0, "vital-signs", 10),
    Lab("8462-4", "Diastolic blood pressure", "mmHg", "mm[Hg]", 79, 10, 0, "vital-signs", 10),
    Lab("29463-7", "Body weight", "kg", "kg", 78, 18, 1, "vital-signs", 8),
    Lab("8302-2", "Body height", "cm", "cm", 169, 10, 1, "vital-signs", 6),
    Lab("39156-5", "Body mass index", "kg/m2", "kg/m2", 27, 5, 1, "vital-signs", 6),
    Lab("8310-5", "Body temperature", "Cel", "Cel", 36.8, 0.4, 1, "vital-signs", 5),
    Lab("9279-1", "Respiratory rate", "breaths/minute", "/min", 16, 3, 0, "vital-signs", 5),
    Lab("59408-5", "Oxygen saturation", "%", "%", 97, 2, 0, "vital-signs", 4),
    Lab("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", "mg/dL", 99, 22, 0, "laboratory", 4),
    Lab("4548-4", "Hemoglobin A1c", "%", "%", 5.9, 0.9, 1, "laboratory", 3),
    Lab("2093-3", "Cholesterol [Mass/volume]", "mg/dL", "mg/dL", 192, 38, 0, "laboratory", 3),
    Lab("2085-9", "HDL Cholesterol", "mg/dL", "mg/dL", 52, 14, 0, "laboratory", 2.5),
    Lab("18262-6", "LDL Cholesterol", "mg/dL", "mg/dL", 112, 32, 0, "laboratory", 2.5),
    Lab("2571-8", "Triglycerides", "mg/dL", "mg/dL", 140, 60, 0, "laboratory", 2.5),
    Lab("2160-0", "Creatinine", "mg/dL", "mg/dL", 0.95, 0.25, 2, "laboratory", 3),
    Lab("33914-3", "eGFR", "mL/min/{1.73_m2}", "mL/min/{1.73_m2}", 88, 20, 0, "laboratory", 2),
    Lab("2951-2", "Sodium", "mmol/L", "mmol/L", 140, 3, 0, "laboratory", 2.5),
    Lab("2823-3", "Potassium", "mmol/L", "mmol/L", 4.2, 0.4, 1, "laboratory", 2.5),
    Lab("718-7", "Hemoglobin", "g/dL", "g/dL", 13.8, 1.6, 1, "laboratory", 3),
    Lab("6690-2", "Leukocytes", "10*3/uL", "10*3/uL", 7.2, 2, 1, "laboratory", 2.5),
    Lab("777-3", "Platelets", "10*3/uL", "10*3/uL", 250, 60, 0, "laboratory", 2),
    Lab("1742-6", "ALT", "U/L", "U/L", 28, 12, 0, "laboratory", 1.5),
    Lab("1920-8", "AST", "U/L", "U/L", 25, 9, 0, "laboratory", 1.5),
    Lab("3016-3", "TSH", "m[IU]/L", "m[IU]/L", 2.1, 1.1, 2, "laboratory", 1),
    Lab("2276-4", "Ferritin", "ng/mL", "ng/mL", 110, 70, 0, "laboratory", 0.5),
    Lab("14647-2", "Vitamin D", "ng/mL", "ng/mL", 29, 10, 0, "laboratory", 0.3),
    Lab("2857-1", "PSA", "ng/mL", "ng/mL", 1.6, 1.5, 2, "laboratory", 0.2),
)
CONDITIONS = (
    ("38341003", "Hypertensive disorder", 12),
    ("55822004", "Hyperlipidemia", 9),
    ("44054006", "Diabetes mellitus type 2", 7),
    ("195967001", "Asthma", 5),
    ("35489007", "Depressive disorder", 5),
    ("197480006", "Anxiety disorder", 5),
    ("40055000", "Chronic sinusitis", 4),
    ("444814009", "Viral sinusitis", 6),
    ("10509002", "Acute bronchitis", 5),
    ("43878008", "Streptococcal sore throat", 4),
    ("13645005", "Chronic obstructive lung disease", 3),
    ("414545008", "Ischemic heart disease", 2),
    ("49436004", "Atrial fibrillation", 2),
    ("162864005", "Body mass index 30+ - obesity", 6),
    ("431855005", "Chronic kidney disease stage 1", 1.5),
    ("239873007", "Osteoarthritis of knee", 3),
    ("68496003", "Polyp of colon", 1),
    ("26929004", "Alzheimer's disease", 0.5),
    ("254637007", "Non-small cell lung cancer", 0.3),
    ("230690007", "Cerebrovascular accident", 0.8),
)
ENCOUNTER_TYPES = (
    ("185349003", "Encounter for check up", 8),
    ("185345009", "Encounter for symptom", 6),
    ("390906007", "Follow-up encounter", 4),
    ("50849002", "Emergency room admission", 1),
    ("183452005", "Emergency hospital admission", 0.6),
)
CLASSES = (("AMB", "ambulatory", 85), ("EMER", "emergency", 10), ("IMP", "inpatient encounter", 5))


class Weighted:
    """A weighted choice in O(log n)."""

    def __init__(self, items: Sequence[Any], weights: Sequence[float]) -> None:
        self.items = list(items)
        self.cum = list(itertools.accumulate(weights))

    def pick(self, rng: random.Random) -> Any:
        return self.items[bisect.bisect_right(self.cum, rng.random() * self.cum[-1])]


def _surname_table() -> Weighted:
    """Real common surnames (about 12% of people) and a long Zipf tail of invented ones."""
    rng = random.Random(1)
    tail: list[str] = []
    seen = set(SURNAMES)
    while len(tail) < 40_000:
        name = rng.choice(ONSETS) + rng.choice(MIDDLES) + rng.choice(CODAS)
        if rng.random() < 0.3:
            name = rng.choice(ONSETS) + rng.choice(CODAS)
        if name not in seen:
            seen.add(name)
            tail.append(name)
    head_share = sum(SURNAMES.values()) / 100_000
    zipf = [1 / (rank + 300) for rank in range(len(tail))]
    scale = (1 - head_share) / sum(zipf)
    names = [*SURNAMES, *tail]
    weights = [w / 100_000 for w in SURNAMES.values()] + [z * scale for z in zipf]
    return Weighted(names, weights)


FAMILIES = _surname_table()
FEMALE = Weighted(GIVEN_FEMALE, [1 / (i + 3) for i in range(len(GIVEN_FEMALE))])
MALE = Weighted(GIVEN_MALE, [1 / (i + 3) for i in range(len(GIVEN_MALE))])
LAB_PICK = Weighted(LABS, [lab.weight for lab in LABS])
CONDITION_PICK = Weighted(CONDITIONS, [c[2] for c in CONDITIONS])
ENCOUNTER_PICK = Weighted(ENCOUNTER_TYPES, [e[2] for e in ENCOUNTER_TYPES])
CLASS_PICK = Weighted(CLASSES, [c[2] for c in CLASSES])


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _uid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _coding(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _patient(rng: random.Random, n: int) -> dict[str, Any]:
    female = rng.random() < 0.51
    given = [(FEMALE if female else MALE).pick(rng)]
    if rng.random() < 0.4:
        given.append((FEMALE if female else MALE).pick(rng))
    born = datetime(1930, 1, 1) + timedelta(days=rng.randrange(90 * 365))
    return {
        "resourceType": "Patient",
        "identifier": [
            {
                "use": "usual",
                "type": _coding("http://terminology.hl7.org/CodeSystem/v2-0203", "MR", "MRN"),
                "system": MRN,
                "value": f"MRN{n + 1:08d}",
            },
            {"system": SSN, "value": f"{rng.randrange(100, 900)}-{rng.randrange(10, 99)}-"
             f"{rng.randrange(1000, 9999)}"},
        ],
        "active": True,
        "name": [{"use": "official", "family": FAMILIES.pick(rng), "given": given}],
        "telecom": [
            {"system": "phone", "value": f"555-{rng.randrange(1000, 9999)}", "use": "home"}
        ],
        "gender": "female" if female else "male",
        "birthDate": born.strftime("%Y-%m-%d"),
        "address": [
            {
                "use": "home",
                "line": [f"{rng.randrange(1, 999)} {rng.choice(STREETS)} St"],
                "city": rng.choice(CITIES),
                "state": "MA",
                "postalCode": f"0{rng.randrange(1000, 2800)}",
                "country": "US",
            }
        ],
    }  # fmt: skip


def _encounter(rng: random.Random, patient_id: str, start: datetime) -> dict[str, Any]:
    klass = CLASS_PICK.pick(rng)
    kind = ENCOUNTER_PICK.pick(rng)
    hours = rng.uniform(0.25, 1.0) if klass[0] == "AMB" else rng.uniform(2, 96)
    return {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": ACT_CODE, "code": klass[0], "display": klass[1]},
        "type": [_coding(SNOMED, kind[0], kind[1])],
        "subject": {"reference": f"Patient/{patient_id}"},
        "period": {"start": _iso(start), "end": _iso(start + timedelta(hours=hours))},
    }


def _condition(
    rng: random.Random, patient_id: str, encounter_id: str, at: datetime
) -> dict[str, Any]:
    code, display, _ = CONDITION_PICK.pick(rng)
    onset = at - timedelta(days=rng.randrange(0, 3 * 365))
    return {
        "resourceType": "Condition",
        "clinicalStatus": _coding(CLINICAL, "active", "Active"),
        "verificationStatus": _coding(VERIFICATION, "confirmed", "Confirmed"),
        "category": [_coding(COND_CATEGORY, "encounter-diagnosis", "Encounter Diagnosis")],
        "code": _coding(SNOMED, code, display),
        "subject": {"reference": f"Patient/{patient_id}"},
        "encounter": {"reference": f"Encounter/{encounter_id}"},
        "onsetDateTime": _iso(onset),
        "recordedDate": _iso(at),
    }


def _observation(
    rng: random.Random, patient_id: str, encounter_id: str, at: datetime
) -> dict[str, Any]:
    lab: Lab = LAB_PICK.pick(rng)
    value = round(max(lab.mean / 10, rng.gauss(lab.mean, lab.sd)), lab.decimals)
    category = "Vital Signs" if lab.category == "vital-signs" else "Laboratory"
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [_coding(OBS_CATEGORY, lab.category, category)],
        "code": _coding(LOINC, lab.code, lab.display),
        "subject": {"reference": f"Patient/{patient_id}"},
        "encounter": {"reference": f"Encounter/{encounter_id}"},
        "effectiveDateTime": _iso(at),
        "valueQuantity": {
            "value": int(value) if lab.decimals == 0 else value,
            "unit": lab.unit,
            "system": UCUM,
            "code": lab.ucum,
        },
    }


def population(seed: int, n: int) -> list[tuple[str, dict[str, Any]]]:
    """Patient n and its resources as (id, body without id or meta), the same on every run."""
    rng = random.Random(f"{seed}:{n}")
    pid = _uid(rng)
    out: list[tuple[str, dict[str, Any]]] = [(pid, _patient(rng, n))]
    visits = sorted(
        FIRST_DAY + timedelta(seconds=rng.randrange(SPAN_SECONDS - 86_400)) for _ in range(2)
    )
    encounters = [(_uid(rng), t) for t in visits]
    for eid, t in encounters:
        out.append((eid, _encounter(rng, pid, t)))
    for _ in range(2):
        eid, t = rng.choice(encounters)
        out.append((_uid(rng), _condition(rng, pid, eid, t)))
    for _ in range(5 + (rng.random() < 0.5)):
        eid, t = rng.choice(encounters)
        at = t + timedelta(seconds=rng.randrange(3600))
        out.append((_uid(rng), _observation(rng, pid, eid, at)))
    return out


# --- the loader ------------------------------------------------------------------------------

# Binary COPY wants each column's type; the schema's String columns are varchar (text format).
_PG_TYPES = {
    "VARCHAR": "text",
    "INTEGER": "int4",
    "BIGINT": "int8",
    "BOOLEAN": "bool",
    "DATETIME": "timestamptz",
    "FLOAT": "float8",
    "BYTEA": "bytea",
    "LARGEBINARY": "bytea",
}


def _copy_spec(table: Any, skip: tuple[str, ...] = ()) -> tuple[str, list[str], list[str]]:
    from sqlalchemy.dialects import postgresql

    dialect = postgresql.dialect()
    names, types = [], []
    for column in table.columns:
        if column.name in skip:
            continue
        compiled = column.type.compile(dialect=dialect).split("(")[0].upper()
        kind = {"TIMESTAMP WITH TIME ZONE": "timestamptz", "DOUBLE PRECISION": "float8"}.get(
            compiled, _PG_TYPES.get(compiled, compiled.lower())
        )
        names.append(column.name)
        types.append(kind)
    return table.name, names, types


@dataclass
class Batch:
    """Rows of one chunk of patients, by table, in COPY column order."""

    rows: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    patients: int = 0
    resources: int = 0

    def count(self) -> int:
        return sum(len(r) for r in self.rows.values())


_SPECS: dict[str, tuple[str, list[str], list[str]]] = {}
_WORKER: dict[str, Any] = {}


def _specs() -> dict[str, tuple[str, list[str], list[str]]]:
    if not _SPECS:
        _SPECS["resources"] = _copy_spec(resources)
        _SPECS["resource_history"] = _copy_spec(resource_history, skip=("seq",))
        for name, table in INDEX_TABLES.items():
            _SPECS[name] = _copy_spec(table)
        _SPECS["outbound_reference"] = _copy_spec(outbound_reference)
    return _SPECS


def build_batch(registry: Registry, seed: int, start: int, stop: int) -> Batch:
    """What the hub's create writes for patients [start, stop), as rows."""
    specs = _specs()
    batch = Batch({name: [] for name in specs})
    for n in range(start, stop):
        for j, (rid, body) in enumerate(population(seed, n)):
            at = STAMPED_FROM + timedelta(milliseconds=n * 16 + j)
            # As hub.interactions.writes.save does for a create.
            digest = content_hash({**body, "id": rid})
            stamped = stamp(body, rid, 1, at)
            content = orjson.dumps(stamped)
            kind = stamped["resourceType"]
            batch.rows["resources"].append((kind, rid, 1, at, False, digest, content))
            batch.rows["resource_history"].append(
                (kind, rid, 1, at, "POST", False, digest, content)
            )
            batch.rows["outbound_reference"].extend((kind, rid, *t) for t in targets(stamped))
            for table, rows in extract(registry, stamped).items():
                columns = specs[table][1]
                out = batch.rows[table]
                for row in rows:
                    out.append(tuple(row.get(c) for c in columns))
            batch.resources += 1
        batch.patients += 1
    return batch


def copy_batch(conn: psycopg.Connection[Any], batch: Batch) -> None:
    specs = _specs()
    with conn.cursor() as cur:
        for name, rows in batch.rows.items():
            if not rows:
                continue
            table, columns, types = specs[name]
            sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
            with cur.copy(sql) as copy:
                copy.set_types(types)
                for row in rows:
                    copy.write_row(row)
    conn.commit()


def _worker_init(url: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER["registry"] = load_default()
    _WORKER["conn"] = psycopg.connect(libpq_url(url))


def _worker_load(task: tuple[int, int, int]) -> tuple[int, int, dict[str, int]]:
    seed, start, stop = task
    batch = build_batch(_WORKER["registry"], seed, start, stop)
    copy_batch(_WORKER["conn"], batch)
    return batch.patients, batch.resources, {k: len(v) for k, v in batch.rows.items()}


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@dataclass
class LoadReport:
    patients: int
    resources: int
    rows: dict[str, int]
    copy_seconds: float
    index_seconds: float
    analyze_seconds: float
    jobs: int

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    @property
    def seconds(self) -> float:
        return self.copy_seconds + self.index_seconds + self.analyze_seconds

    def lines(self) -> list[str]:
        index_rows = self.total_rows - self.rows["resources"] - self.rows["resource_history"]
        return [
            f"loaded {self.patients:,} patients: {self.resources:,} resources, "
            f"{index_rows:,} index rows ({self.total_rows:,} rows in all) with {self.jobs} "
            "processes",
            f"  generate + extract + COPY {_duration(self.copy_seconds)} "
            f"({self.resources / self.copy_seconds:,.0f} resources/s, "
            f"{self.total_rows / self.copy_seconds:,.0f} rows/s); index build "
            f"{_duration(self.index_seconds)}; VACUUM ANALYZE {_duration(self.analyze_seconds)}",
            f"  overall {_duration(self.seconds)}: {self.resources / self.seconds:,.0f} "
            f"resources/s, {self.total_rows / self.seconds:,.0f} rows/s",
            "  rows: " + ", ".join(f"{k} {v:,}" for k, v in self.rows.items()),
        ]


def _secondary_indexes(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """(name, definition) of the store's indexes that back no constraint."""
    tables = ["resources", "resource_history", *INDEX_TABLES, "outbound_reference"]
    rows = conn.execute(
        """
        SELECT i.indexname, i.indexdef FROM pg_indexes i
        WHERE i.schemaname = 'public' AND i.tablename = ANY(%s)
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c
                          WHERE c.conindid = (quote_ident(i.indexname))::regclass)
        ORDER BY i.tablename, i.indexname
        """,
        (tables,),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def load(url: str, patients: int, seed: int, jobs: int, chunk: int) -> LoadReport:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        indexes = _secondary_indexes(conn)
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
    print(f"dropped {len(indexes)} secondary indexes for the load", flush=True)
    tasks = [(seed, s, min(s + chunk, patients)) for s in range(0, patients, chunk)]
    rows: dict[str, int] = {}
    done_patients = done_resources = 0
    started = last_print = time.perf_counter()
    context = mp.get_context("fork")
    with context.Pool(jobs, initializer=_worker_init, initargs=(url,)) as pool:
        for p, r, counts in pool.imap_unordered(_worker_load, tasks):
            done_patients += p
            done_resources += r
            for k, v in counts.items():
                rows[k] = rows.get(k, 0) + v
            now = time.perf_counter()
            if now - last_print >= 5 or done_patients == patients:
                last_print = now
                elapsed = now - started
                rate = done_patients / elapsed
                print(
                    f"  {done_patients:>9,}/{patients:,} patients  {done_resources:>10,} "
                    f"resources  {sum(rows.values()):>11,} rows  "
                    f"{done_resources / elapsed:>7,.0f} resources/s  "
                    f"{sum(rows.values()) / elapsed:>8,.0f} rows/s  "
                    f"ETA {_duration((patients - done_patients) / rate if rate else 0)}",
                    flush=True,
                )
    copy_seconds = time.perf_counter() - started
    started = time.perf_counter()
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '1GB'")
        for name, definition in indexes:
            t0 = time.perf_counter()
            conn.execute(definition)
            print(f"  rebuilt {name} in {time.perf_counter() - t0:.1f}s", flush=True)
    index_seconds = time.perf_counter() - started
    started = time.perf_counter()
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        for table in ["resources", "resource_history", *INDEX_TABLES, "outbound_reference"]:
            conn.execute(f"VACUUM (ANALYZE) {table}")
    analyze_seconds = time.perf_counter() - started
    return LoadReport(
        patients,
        done_resources,
        rows,
        copy_seconds,
        index_seconds,
        analyze_seconds,
        jobs,
    )


# --- the database ----------------------------------------------------------------------------


def loaded_population(url: str) -> dict[str, Any] | None:
    """What the marker says the database holds, or None (no database, no marker)."""
    try:
        with psycopg.connect(libpq_url(url), connect_timeout=5) as conn:
            row = conn.execute(
                f"SELECT patients, seed, generator, resources FROM {MARKER_TABLE}"
            ).fetchone()
    except (psycopg.OperationalError, psycopg.errors.UndefinedTable):
        return None
    if row is None:
        return None
    return {"patients": row[0], "seed": row[1], "generator": row[2], "resources": row[3]}


def write_marker(url: str, report: LoadReport, seed: int) -> None:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {MARKER_TABLE} (patients int, seed bigint, generator int, "
            "resources bigint, loaded_at timestamptz, load_report text)"
        )
        conn.execute(
            f"INSERT INTO {MARKER_TABLE} VALUES (%s, %s, %s, %s, now(), %s)",
            (report.patients, seed, GENERATOR_VERSION, report.resources, "\n".join(report.lines())),
        )


def stored_load_report(url: str) -> str | None:
    try:
        with psycopg.connect(libpq_url(url)) as conn:
            row = conn.execute(f"SELECT load_report FROM {MARKER_TABLE}").fetchone()
    except (psycopg.OperationalError, psycopg.errors.UndefinedTable):
        return None
    return str(row[0]) if row else None


# --- the hub over HTTP -----------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What a search answered: the page's matches in order, the included keys, the total."""

    matches: tuple[str, ...]
    included: frozenset[str]
    total: int | None

    def differs(self, other: Answer) -> str | None:
        if self.matches != other.matches:
            return f"matches differ ({len(self.matches)} vs {len(other.matches)})"
        if self.included != other.included:
            return f"includes differ ({len(self.included)} vs {len(other.included)})"
        if self.total != other.total:
            return f"totals differ ({self.total} vs {other.total})"
        return None


def bundle_answer(bundle: dict[str, Any]) -> Answer:
    matches: list[str] = []
    included: set[str] = set()
    for entry in bundle.get("entry", []):
        resource = entry["resource"]
        key = f"{resource['resourceType']}/{resource['id']}"
        if entry.get("search", {}).get("mode") == "include":
            included.add(key)
        else:
            matches.append(key)
    return Answer(tuple(matches), frozenset(included), bundle.get("total"))


def next_path(bundle: dict[str, Any]) -> str:
    for link in bundle.get("link", []):
        if link.get("relation") == "next":
            parts = urlsplit(link["url"])
            return f"{parts.path}?{parts.query}"
    raise RuntimeError("the page has no next link")


class HubClient:
    """One keep-alive HTTP/1.1 connection; the time of a request is send to last byte."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection(HOST, port, timeout=300)

    def get(self, path: str) -> tuple[float, dict[str, Any]]:
        headers = {"Accept": "application/fhir+json"}
        for attempt in (1, 2):
            t0 = time.perf_counter()
            try:
                self.conn.request("GET", path, headers=headers)
                response = self.conn.getresponse()
                body = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionError):
                # uvicorn closes a connection idle for 5 s (while the bench waits): reconnect.
                self.conn.close()
                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=300)
                if attempt == 2:
                    raise
        elapsed = time.perf_counter() - t0
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {body[:500]!r}")
        return elapsed, orjson.loads(body)

    def search(self, case: Case) -> tuple[float, Answer]:
        path = case.path
        for _ in range(case.pages - 1):
            path = next_path(self.get(path)[1])
        elapsed, bundle = self.get(path)
        return elapsed, bundle_answer(bundle)

    def close(self) -> None:
        self.conn.close()


# --- the query shapes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One run of a shape: the hub's request and the hand-written SQL for the same page.

    The SQL returns (mode, res_type, res_id, content, total) rows, matches in page order.
    With pages > 1 the measured request is that page, reached by following `next` links
    (unmeasured); `sql_cursor` then gives the keyset values the SQL page starts after.
    """

    path: str
    sql: str
    params: dict[str, Any]
    pages: int = 1
    sql_cursor: str | None = None
    counted: bool = True  # the answer has a total (without _total=none; see case_page3)


def run_sql(conn: psycopg.Connection[Any], case: Case, up_to: int | None) -> tuple[float, Answer]:
    params = dict(case.params)
    with conn.cursor() as cur:
        if case.sql_cursor is not None:
            row = cur.execute(case.sql_cursor, params).fetchone()
            assert row is not None, "the cursor query found no row"
            params.update(k_value=row[0], k_id=row[1])
        t0 = time.perf_counter()
        rows = cur.execute(case.sql, params).fetchall()
        elapsed = time.perf_counter() - t0
    matches = tuple(f"{r[1]}/{r[2]}" for r in rows if r[0] == "match")
    included = frozenset(f"{r[1]}/{r[2]}" for r in rows if r[0] == "include")
    total = next((r[4] for r in rows if r[0] == "match"), None)
    if total is None and "total" in params:
        total = params["total"]
    counted = case.counted
    if counted and up_to is not None and (total or 0) > up_to:
        counted = False  # more matches than the hub counts by default: it states no total
    return elapsed, Answer(matches, included, (total or 0) if counted else None)


@dataclass(frozen=True)
class Pools:
    """Values the queries draw from (sampled patients, the codes in the data), and the total
    the searches ask for (`--total`)."""

    patients: list[Sampled]
    codes: list[tuple[str, int]]  # LOINC codes of the Observations, with their counts
    years: tuple[int, int]
    total: str = "default"

    @property
    def totals(self) -> bool:
        """Whether the first page states a total (beyond TOTAL_LIMIT by default it does not)."""
        return self.total != "none"

    @property
    def up_to(self) -> int | None:
        return TOTAL_LIMIT if self.total == "default" else None

    @property
    def suffix(self) -> str:
        return "" if self.total == "default" else f"&_total={self.total}"

    def code(self, rng: random.Random, at_least: int = 0) -> str:
        return str(rng.choice([c for c in self.codes if c[1] >= at_least] or self.codes)[0])


@dataclass(frozen=True)
class Sampled:
    """A patient: id, MRN, family name as written, the codes of its Observations."""

    id: str
    mrn: str
    family: str
    codes: tuple[str, ...]


def sample_pools(url: str, seed: int, size: int = 5000, total: str = "default") -> Pools:
    with psycopg.connect(libpq_url(url)) as conn:
        patients = conn.execute(
            """
            WITH p AS (
              SELECT t.res_id, t.code AS mrn FROM search_token t
              WHERE t.res_type = 'Patient' AND t.param = 'identifier' AND t.system = %(mrn)s
              ORDER BY md5(t.res_id || %(seed)s) LIMIT %(size)s)
            SELECT p.res_id, p.mrn,
              (SELECT min(s.exact) FROM search_string s WHERE s.res_type = 'Patient'
                 AND s.res_id = p.res_id AND s.param = 'family'),
              ARRAY(SELECT DISTINCT c.code FROM search_reference r
                    JOIN search_token c ON c.res_type = r.res_type AND c.res_id = r.res_id
                                       AND c.param = 'code'
                    WHERE r.res_type = 'Observation' AND r.param = 'subject'
                      AND r.target_type = 'Patient' AND r.target_id = p.res_id
                    ORDER BY c.code)
            FROM p ORDER BY md5(p.res_id || %(seed)s)
            """,
            {"mrn": MRN, "seed": str(seed), "size": size},
        ).fetchall()
        codes = conn.execute(
            "SELECT code, count(*) FROM search_token WHERE res_type = 'Observation' "
            "AND param = 'code' AND system = %s GROUP BY code ORDER BY code",
            (LOINC,),
        ).fetchall()
    if not patients or not codes:
        raise SystemExit("the database holds no bench population (load it first)")
    return Pools(
        [Sampled(r[0], r[1], r[2], tuple(r[3])) for r in patients if r[2] and r[3]],
        [(r[0], int(r[1])) for r in codes],
        (2015, 2024),
        total,
    )


def _q(value: str) -> str:
    return quote(value, safe="/:")


def _month(rng: random.Random, pools: Pools) -> tuple[datetime, datetime]:
    year = rng.randint(*pools.years)
    month = rng.randint(1, 12)
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def _like(text: str) -> str:
    from hub.search.values import normalise

    escaped = normalise(text).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


# The hand-written SQL. Index rows describe the current version of live resources only (a
# write replaces them, a delete removes them), so, as someone who knows the schema would, the
# SQL finds and counts matches on the index tables and reads `resources` for the page only.
CODE = (
    "t.res_type = 'Observation' AND t.param = 'code' AND t.system = 'http://loinc.org' "
    "AND t.code = %(code)s"
)
# The same code's rows of the `code-date` composite (d: search_composite), with a date.
CODE_DATE = (
    "d.res_type = 'Observation' AND d.param = 'code-date' AND d.c1_system = 'http://loinc.org' "
    "AND d.c1_code = %(code)s AND d.c2_high IS NOT NULL"
)


def count_sql(rows: str, total: str) -> str:
    """The total of a search as the hub states it (`--total`), of the SQL `rows`."""
    if total == "none":
        return "NULL::bigint"
    if total == "accurate":
        return f"(SELECT count(*) FROM {rows})"
    return f"(SELECT count(*) FROM (SELECT 1 FROM {rows} LIMIT {TOTAL_LIMIT + 1}) c)"


def by_id(resource_type: str, matches: str, count: int, total: str) -> str:
    """One page in id order, and the total, of the ids `matches` selects (one row each)."""
    counted = count_sql("m", total)
    return f"""WITH m AS MATERIALIZED ({matches})
        SELECT 'match' AS mode, r.res_type, r.res_id, r.content, {counted}
        FROM resources r
        WHERE r.res_type = '{resource_type}'
          AND r.res_id IN (SELECT res_id FROM m ORDER BY res_id LIMIT {count})
        ORDER BY r.res_id"""


def by_date(
    matches: str, count: int, *, total: str, after: bool = False, of_code: bool = False
) -> str:
    """One page of Observations newest first, of the ids `matches` selects ('' for all).

    `of_code`: `matches` are those of one LOINC code, whose dates the `code-date` composite
    rows hold in order (each Observation has a date here)."""
    rows, high = "search_date d", "d.high"
    among = f"AND d.res_type = 'Observation' AND d.param = 'date' AND d.res_id IN ({matches})"
    if not matches:
        among = "AND d.res_type = 'Observation' AND d.param = 'date'"
    if of_code:
        rows, high, among = "search_composite d", "d.c2_high", f"AND {CODE_DATE}"
    keyset = (
        f"AND {high} <= %(k_value)s "
        f"AND ({high} < %(k_value)s OR ({high} = %(k_value)s AND d.res_id > %(k_id)s))"
        if after
        else ""
    )
    counted = count_sql(
        f"({matches}) m"
        if matches
        else "resources WHERE res_type = 'Observation' AND deleted IS false",
        total,
    )
    return f"""SELECT 'match' AS mode, r.res_type, r.res_id, r.content, {counted}
        FROM (SELECT d.res_id, {high} AS high FROM {rows}
              WHERE true {among} {keyset}
              ORDER BY {high} DESC, d.res_id LIMIT {count}) page
        JOIN resources r ON r.res_type = 'Observation' AND r.res_id = page.res_id
        ORDER BY page.high DESC, page.res_id"""


def case_identifier(rng: random.Random, pools: Pools) -> Case:
    mrn = rng.choice(pools.patients).mrn
    return Case(
        f"{BASE_PATH}/Patient?identifier={_q(f'{MRN}|{mrn}')}{pools.suffix}",
        by_id(
            "Patient",
            "SELECT DISTINCT t.res_id FROM search_token t WHERE t.res_type = 'Patient' "
            "AND t.param = 'identifier' AND t.system = 'urn:mrn' AND t.code = %(mrn)s",
            20,
            pools.total,
        ),
        {"mrn": mrn},
        counted=pools.totals,
    )


def case_family(rng: random.Random, pools: Pools) -> Case:
    prefix = rng.choice(pools.patients).family[:3].lower()
    return Case(
        f"{BASE_PATH}/Patient?family={_q(prefix)}{pools.suffix}",
        by_id(
            "Patient",
            "SELECT DISTINCT s.res_id FROM search_string s WHERE s.res_type = 'Patient' "
            "AND s.param = 'family' AND s.value LIKE %(prefix)s",
            20,
            pools.total,
        ),
        {"prefix": _like(prefix)},
        counted=pools.totals,
    )


def case_date_range(rng: random.Random, pools: Pools) -> Case:
    start, end = _month(rng, pools)
    return Case(
        f"{BASE_PATH}/Observation?date=ge{start:%Y-%m-%d}&date=lt{end:%Y-%m-%d}&_count=50"
        f"{pools.suffix}",
        # Every Observation has one effectiveDateTime to the second: its range starts at low.
        by_id(
            "Observation",
            "SELECT d.res_id FROM search_date d WHERE d.res_type = 'Observation' "
            "AND d.param = 'date' AND d.low >= %(start)s AND d.low < %(end)s",
            50,
            pools.total,
        ),
        {"start": start, "end": end},
        counted=pools.totals,
    )


def case_reference(rng: random.Random, pools: Pools) -> Case:
    pid = rng.choice(pools.patients).id
    return Case(
        f"{BASE_PATH}/Observation?subject=Patient/{pid}{pools.suffix}",
        by_id(
            "Observation",
            "SELECT s.res_id FROM search_reference s WHERE s.res_type = 'Observation' "
            "AND s.param = 'subject' AND s.target_type = 'Patient' "
            "AND s.target_id = %(patient)s",
            20,
            pools.total,
        ),
        {"patient": pid},
        counted=pools.totals,
    )


def case_code_date(rng: random.Random, pools: Pools) -> Case:
    code = pools.code(rng)
    year = rng.randint(pools.years[0] + 1, pools.years[1])
    return Case(
        f"{BASE_PATH}/Observation?code={_q(f'{LOINC}|{code}')}&date=ge{year}{pools.suffix}",
        by_id(
            "Observation",
            f"SELECT d.res_id FROM search_composite d WHERE {CODE_DATE} AND d.c2_low >= %(start)s",
            20,
            pools.total,
        ),
        {"code": code, "start": datetime(year, 1, 1, tzinfo=UTC)},
        counted=pools.totals,
    )


def case_chained(rng: random.Random, pools: Pools) -> Case:
    patient = rng.choice(pools.patients)
    family, code = patient.family, rng.choice(patient.codes)
    return Case(
        f"{BASE_PATH}/Observation?subject:Patient.name={_q(family)}"
        f"&code={_q(f'{LOINC}|{code}')}{pools.suffix}",
        by_id(
            "Observation",
            """SELECT DISTINCT s.res_id FROM search_string n
            JOIN search_reference s ON s.res_type = 'Observation' AND s.param = 'subject'
                 AND s.target_type = 'Patient' AND s.target_id = n.res_id
            JOIN search_token t ON t.res_type = 'Observation' AND t.res_id = s.res_id
                 AND t.param = 'code' AND t.system = 'http://loinc.org' AND t.code = %(code)s
            WHERE n.res_type = 'Patient' AND n.param = 'name' AND n.value LIKE %(name)s""",
            20,
            pools.total,
        ),
        {"code": code, "name": _like(family)},
        counted=pools.totals,
    )


def case_has(rng: random.Random, pools: Pools) -> Case:
    patient = rng.choice(pools.patients)
    family, code = patient.family, rng.choice(patient.codes)
    return Case(
        f"{BASE_PATH}/Patient?_has:Observation:patient:code={_q(code)}&family={_q(family)}"
        f"{pools.suffix}",
        by_id(
            "Patient",
            """SELECT DISTINCT f.res_id FROM search_string f
            WHERE f.res_type = 'Patient' AND f.param = 'family' AND f.value LIKE %(family)s
              AND EXISTS (
                SELECT 1 FROM search_reference s
                JOIN search_token t ON t.res_type = s.res_type AND t.res_id = s.res_id
                                   AND t.param = 'code' AND t.code = %(code)s
                WHERE s.res_type = 'Observation' AND s.param = 'patient'
                  AND s.target_type = 'Patient' AND s.target_id = f.res_id)""",
            20,
            pools.total,
        ),
        {"code": code, "family": _like(family)},
        counted=pools.totals,
    )


def case_include(rng: random.Random, pools: Pools) -> Case:
    code = pools.code(rng)
    return Case(
        f"{BASE_PATH}/Observation?code={_q(f'{LOINC}|{code}')}"
        f"&_include=Observation:subject&_count=50{pools.suffix}",
        f"""WITH m AS MATERIALIZED (SELECT t.res_id FROM search_token t WHERE {CODE}),
        page AS (SELECT res_id FROM m ORDER BY res_id LIMIT 50)
        SELECT 'match' AS mode, r.res_type, r.res_id, r.content,
          {count_sql("m", pools.total)}
        FROM resources r WHERE r.res_type = 'Observation' AND r.res_id IN (SELECT * FROM page)
        UNION ALL
        SELECT 'include', p.res_type, p.res_id, p.content, NULL FROM resources p
        WHERE p.res_type = 'Patient' AND p.deleted IS false AND p.res_id IN (
          SELECT s.target_id FROM search_reference s
          WHERE s.res_type = 'Observation' AND s.res_id IN (SELECT * FROM page)
            AND s.param = 'subject' AND s.target_type = 'Patient')
        ORDER BY mode DESC, res_id""",
        {"code": code},
        counted=pools.totals,
    )


def case_sort_code(rng: random.Random, pools: Pools) -> Case:
    code = pools.code(rng)
    return Case(
        f"{BASE_PATH}/Observation?code={_q(f'{LOINC}|{code}')}&_sort=-date&_count=50{pools.suffix}",
        by_date(
            f"SELECT t.res_id FROM search_token t WHERE {CODE}",
            50,
            total=pools.total,
            of_code=True,
        ),
        {"code": code},
        counted=pools.totals,
    )


def case_sort_all(rng: random.Random, pools: Pools) -> Case:
    return Case(
        f"{BASE_PATH}/Observation?_sort=-date&_count=50{pools.suffix}",
        by_date("", 50, total=pools.total),
        {},
        counted=pools.totals,
    )


def case_page3(rng: random.Random, pools: Pools) -> Case:
    code = pools.code(rng, at_least=151)
    matches = f"SELECT t.res_id FROM search_token t WHERE {CODE}"
    later = "accurate" if pools.total == "accurate" else "none"
    return Case(
        f"{BASE_PATH}/Observation?code={_q(f'{LOINC}|{code}')}&_sort=-date&_count=50{pools.suffix}",
        # A later page states a total only when _total asks for one.
        by_date(matches, 50, total=later, after=True, of_code=True),
        {"code": code},
        counted=later != "none",
        pages=3,
        sql_cursor=f"""SELECT d.c2_high, d.res_id FROM search_composite d WHERE {CODE_DATE}
        ORDER BY d.c2_high DESC, d.res_id OFFSET 99 LIMIT 1""",
    )


@dataclass(frozen=True)
class Shape:
    key: str
    name: str
    example: str
    target_ms: float
    make: Callable[[random.Random, Pools], Case]


SINGLE, CHAINED = 50.0, 200.0
SHAPES = (
    Shape("identifier", "token: identifier", "Patient?identifier=urn:mrn|X", SINGLE,
          case_identifier),
    Shape("family", "string: family prefix", "Patient?family=smi", SINGLE, case_family),
    Shape("date", "date range (1 month)",
          "Observation?date=ge2020-01-01&date=lt2020-02-01&_count=50", SINGLE, case_date_range),
    Shape("reference", "reference: subject", "Observation?subject=Patient/X", SINGLE,
          case_reference),
    Shape("code-date", "token + date", "Observation?code=http://loinc.org|X&date=ge2021",
          SINGLE, case_code_date),
    Shape("chained", "chained", "Observation?subject:Patient.name=X&code=http://loinc.org|Y",
          CHAINED, case_chained),
    Shape("has", "_has + family", "Patient?_has:Observation:patient:code=X&family=Y", CHAINED,
          case_has),
    Shape("include", "_include", "Observation?code=…|X&_include=Observation:subject&_count=50",
          SINGLE, case_include),
    Shape("sort-code", "_sort=-date with code", "Observation?code=…|X&_sort=-date&_count=50",
          SINGLE, case_sort_code),
    Shape("sort-all", "_sort=-date, no filter", "Observation?_sort=-date&_count=50", SINGLE,
          case_sort_all),
    Shape("page3", "page 3 (next twice)", "Observation?code=…|X&_sort=-date&_count=50 → page 3",
          SINGLE, case_page3),
)  # fmt: skip


# --- measuring -------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


@dataclass
class Figure:
    shape: Shape
    hub: list[float] = field(default_factory=list)
    sql: list[float] = field(default_factory=list)
    totals: list[int] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    busy_before: float = 0.0  # the machine's busy share just before (others' load)
    busy: float = 0.0  # ... and while measuring (this bench's own load included)

    def p(self, side: str, q: float) -> float:
        return percentile(self.hub if side == "hub" else self.sql, q) * 1000

    @property
    def met(self) -> bool:
        return self.p("hub", 0.95) < self.shape.target_ms and not self.mismatches


def measure(
    shape: Shape,
    pools: Pools,
    client: HubClient,
    conn: psycopg.Connection[Any],
    runs: int,
    warmup: int,
    budget: float,
    seed: int,
) -> Figure:
    rng = random.Random(f"{seed}:{shape.key}")
    figure = Figure(shape)
    ticks = cpu_ticks()
    started = time.perf_counter()
    for _ in range(warmup):
        case = shape.make(rng, pools)
        client.search(case)
        run_sql(conn, case, pools.up_to)
        if time.perf_counter() - started > budget / 4:
            break
    started = time.perf_counter()
    for i in range(runs):
        case = shape.make(rng, pools)
        if i % 2 == 0:
            hub_s, hub_answer = client.search(case)
            sql_s, sql_answer = run_sql(conn, case, pools.up_to)
        else:
            sql_s, sql_answer = run_sql(conn, case, pools.up_to)
            hub_s, hub_answer = client.search(case)
        figure.hub.append(hub_s)
        figure.sql.append(sql_s)
        if hub_answer.total is not None:
            figure.totals.append(hub_answer.total)
        if pools.up_to is not None and hub_answer.total is None:
            # Without _total the hub may leave out a total it expects to pass the limit.
            sql_answer = dataclasses.replace(sql_answer, total=None)
        problem = hub_answer.differs(sql_answer)
        if problem:
            figure.mismatches.append(f"{case.path}: {problem}")
        if time.perf_counter() - started > budget and i + 1 >= 10:
            break
    figure.busy = busy_share(ticks)
    return figure


def report(figures: Sequence[Figure]) -> list[str]:
    head = (
        f"{'shape':<24} {'runs':>4} {'matches':>8} | {'hub p50':>8} {'p95':>8} | "
        f"{'SQL p50':>8} {'p95':>8} | {'ratio50':>7} {'ratio95':>7} | {'target':>6} "
        f"{'cpu':>8}  result"
    )
    lines = [head, "-" * len(head)]
    for f in figures:
        h50, h95, s50, s95 = f.p("hub", 0.5), f.p("hub", 0.95), f.p("sql", 0.5), f.p("sql", 0.95)
        matches = f"{statistics.median(f.totals):,.0f}" if f.totals else "-"
        result = "met" if f.met else "MISSED"
        if f.mismatches:
            result += f" ({len(f.mismatches)} answers differ)"
        lines.append(
            f"{f.shape.name:<24} {len(f.hub):>4} {matches:>8} | {h50:>8.1f} {h95:>8.1f} | "
            f"{s50:>8.1f} {s95:>8.1f} | {h50 / s50:>6.1f}x {h95 / s95:>6.1f}x | "
            f"{f.shape.target_ms:>4.0f}ms {f.busy_before:>3.0%}/{f.busy:>3.0%}  {result}"
        )
    return lines


def markdown(figures: Sequence[Figure]) -> list[str]:
    lines = [
        "| query | runs | median matches | hub p50 ms | hub p95 ms | SQL p50 ms | SQL p95 ms "
        "| ratio p50 | ratio p95 | target p95 | met |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for f in figures:
        h50, h95, s50, s95 = f.p("hub", 0.5), f.p("hub", 0.95), f.p("sql", 0.5), f.p("sql", 0.95)
        matches = f"{statistics.median(f.totals):,.0f}" if f.totals else "-"
        lines.append(
            f"| `{f.shape.example}` | {len(f.hub)} | {matches} | {h50:.1f} | {h95:.1f} | "
            f"{s50:.1f} | {s95:.1f} | {h50 / s50:.1f}x | {h95 / s95:.1f}x | "
            f"< {f.shape.target_ms:.0f} ms | {'yes' if f.met else '**no**'} |"
        )
    return lines


# --- EXPLAIN ---------------------------------------------------------------------------------

_INDEX_USE = re.compile(r"(?:Index Only Scan|Index Scan|Bitmap Index Scan)(?: Backward)? "
                        r"(?:using|on) (\w+)")  # fmt: skip
_SEQ_SCAN = re.compile(r"Seq Scan on (\w+)")
_EXEC_TIME = re.compile(r"Execution Time: ([\d.]+) ms")


def _short(value: Any, limit: int = 400) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f" ... ({len(text)} chars)"


def _plan_summary(plan: str) -> str:
    used = sorted(set(_INDEX_USE.findall(plan)))
    seq = sorted(set(_SEQ_SCAN.findall(plan)))
    found = _EXEC_TIME.search(plan)
    spent = f"{float(found.group(1)):.1f} ms" if found else "?"
    text = f"{spent}; indexes: {', '.join(used) or 'none'}"
    return text + (f"; SEQ SCAN on {', '.join(seq)}" if seq else "")


def explain(url: str, shapes: Sequence[Shape], pools: Pools, seed: int) -> None:
    """EXPLAIN (ANALYZE, BUFFERS) of the hub's statements for each shape, and the hand SQL."""
    from sqlalchemy import event

    from hub.api.app import build_context
    from hub.interactions.context import Request
    from hub.interactions.search import search
    from hub.settings import Settings

    ctx = build_context(Settings(database_url=url), None)
    engine = ctx.repo.engine  # type: ignore[attr-defined]
    captured: list[tuple[str, Any]] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _capture(*args: Any) -> None:
        captured.append((args[2], args[3]))

    base = f"http://{HOST}{BASE_PATH}"
    with psycopg.connect(libpq_url(url)) as conn:
        for shape in shapes:
            case = shape.make(random.Random(f"{seed}:{shape.key}:explain"), pools)
            print(f"\n=== {shape.name}: {case.path}", flush=True)
            path, query = case.path.split("?", 1)
            params = parse_qsl(query, keep_blank_values=True)
            for _ in range(case.pages):
                captured.clear()
                req = Request("GET", base, resource_type=path.rsplit("/", 1)[-1], params=params)
                result = search(ctx, req)
                assert result.body is not None
                if case.pages > 1:
                    links = {x["relation"]: x["url"] for x in result.body.get("link", [])}
                    if "next" in links:
                        params = parse_qsl(urlsplit(links["next"]).query)
            statements = list(captured)
            for i, (statement, values) in enumerate(statements, 1):
                # The hub's own EXPLAIN (an estimated total) is timed as it is.
                prefix = "" if statement.startswith("EXPLAIN") else "EXPLAIN (ANALYZE, BUFFERS) "
                with engine.connect() as c:
                    t0 = time.perf_counter()
                    rows = c.exec_driver_sql(prefix + statement, values).all()
                    if not prefix:
                        rows = [(f"Execution Time: {(time.perf_counter() - t0) * 1000:.3f} ms",)]
                plan = "\n".join(r[0] for r in rows)
                print(f"--- hub statement {i}/{len(statements)}: {_plan_summary(plan)}")
                print(statement if len(statement) < 3000 else statement[:3000] + " ...")
                print(f"    params: {_short(values)}")
                print(plan)
            sql_params = dict(case.params)
            if case.sql_cursor is not None:
                row = conn.execute(case.sql_cursor, sql_params).fetchone()
                assert row is not None
                sql_params.update(k_value=row[0], k_id=row[1])
            rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + case.sql, sql_params).fetchall()
            conn.rollback()
            plan = "\n".join(r[0] for r in rows)
            print(f"--- hand SQL: {_plan_summary(plan)}")
            print(case.sql)
            print(f"    params: {sql_params}")
            print(plan, flush=True)
    ctx.repo.close()


# --- main ------------------------------------------------------------------------------------


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the machine since boot, from /proc/stat."""
    try:
        values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0, 0
    return sum(values) - values[3] - values[4], sum(values)


def busy_share(since: tuple[int, int]) -> float:
    """The share of the machine's CPU time spent busy since `since` (0..1)."""
    now = cpu_ticks()
    total = now[1] - since[1]
    return (now[0] - since[0]) / total if total > 0 else 0.0


def wait_for_idle(limit: float, patience: float) -> float:
    """Wait (up to `patience` seconds) for a 3 s window with the CPUs less than `limit` busy."""
    deadline = time.monotonic() + patience
    while True:
        start = cpu_ticks()
        time.sleep(3)
        share = busy_share(start)
        if share < limit or limit >= 1 or time.monotonic() > deadline:
            return share
        print(f"  (machine {share:.0%} busy: waiting for < {limit:.0%})", flush=True)


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine(url: str) -> list[str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except OSError:
        mem_kb = 0
    with psycopg.connect(libpq_url(url)) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        settings = conn.execute(
            "SELECT name, setting, unit FROM pg_settings WHERE name IN ('shared_buffers', "
            "'work_mem', 'effective_cache_size', 'random_page_cost', 'jit', "
            "'max_parallel_workers_per_gather') ORDER BY name"
        ).fetchall()
        size = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))")
        db_size = size.fetchone()
    pg = ", ".join(f"{n}={s}{u or ''}" for n, s, u in settings)
    return [
        f"machine: {cpu}, {os.cpu_count()} CPUs, {mem_kb / 1024 / 1024:.0f} GiB RAM; "
        f"Python {platform.python_version()}",
        f"PostgreSQL {version[0] if version else '?'} on {HOST} ({pg}); "
        f"database size {db_size[0] if db_size else '?'}",
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--patients", type=int, default=DEFAULT_PATIENTS, help="patients to generate")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument(
        "--database-url",
        help="bench database: DROPPED and recreated unless --reuse/--skip-load (its name must "
        f"contain 'bench') [{DEFAULT_URL}, with _N appended for --patients N]",
    )
    p.add_argument(
        "--reuse", action="store_true", help="keep the database when it holds this population"
    )
    p.add_argument("--skip-load", action="store_true", help="use the database as it is")
    p.add_argument("--load-only", action="store_true", help="load, then stop")
    p.add_argument("--jobs", type=int, default=2, help="loader processes")
    p.add_argument("--chunk", type=int, default=250, help="patients per COPY transaction")
    p.add_argument("--runs", type=int, default=100, help="measured runs per query shape")
    p.add_argument("--warmup", type=int, default=10, help="unmeasured runs per shape first")
    p.add_argument(
        "--budget", type=float, default=120.0, help="seconds per shape, then stop (after 10 runs)"
    )
    p.add_argument("--workers", type=int, default=1, help="uvicorn workers of `hub serve`")
    p.add_argument(
        "--hub-root",
        type=Path,
        default=ROOT,
        help="directory holding the `hub` package that `hub serve` runs (to compare versions)",
    )
    p.add_argument("--only", help="comma-separated shape keys: " + ",".join(s.key for s in SHAPES))
    p.add_argument(
        "--idle",
        type=float,
        default=1.0,
        help="before each shape, wait for the machine's CPUs to be less than this share busy "
        "(0.3: 30%%; 1: do not wait); the report shows busy shares before/during each shape",
    )
    p.add_argument("--patience", type=float, default=600.0, help="seconds to wait for --idle")
    p.add_argument(
        "--total",
        choices=("default", "accurate", "none"),
        default="default",
        help="the total searches ask for: default (no _total: the hub counts up to "
        f"{TOTAL_LIMIT:,} matches and states no total beyond), accurate (_total=accurate: "
        "every match counted), none (_total=none); the SQL counts alike",
    )
    p.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of each shape")
    p.add_argument("--no-measure", action="store_true", help="with --explain: plans only")
    args = p.parse_args(argv)
    if args.database_url is None:
        suffix = "" if args.patients == DEFAULT_PATIENTS else f"_{args.patients}"
        args.database_url = DEFAULT_URL + suffix
    args.database_url = args.database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    return args


def prepare(args: argparse.Namespace) -> None:
    url = args.database_url
    if args.skip_load:
        print(f"database: {url.split('@')[-1]} (as it is: --skip-load)", flush=True)
        return
    held = loaded_population(url)
    wanted = {"patients": args.patients, "seed": args.seed, "generator": GENERATOR_VERSION}
    if args.reuse and held and all(held[k] == v for k, v in wanted.items()):
        print(f"database: {url.split('@')[-1]} reused: {held['resources']:,} resources of "
              f"{held['patients']:,} patients", flush=True)  # fmt: skip
        return
    print(f"database: {url.split('@')[-1]} (recreated and migrated)", flush=True)
    recreate_database(url)
    print(f"loading {args.patients:,} patients (seed {args.seed}) with {args.jobs} processes",
          flush=True)  # fmt: skip
    result = load(url, args.patients, args.seed, args.jobs, args.chunk)
    write_marker(url, result, args.seed)
    print("\n".join(result.lines()), flush=True)


@contextmanager
def serving(url: str, workers: int, root: Path) -> Iterator[Server]:
    with tempfile.TemporaryDirectory(prefix="hub-bench-search-") as tmp:
        server = start_hub(url, workers, Path(tmp) / "hub.log", root)
        try:
            yield server
        finally:
            server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Stopped with SIGTERM (kill), still stop the server: SystemExit runs the finally blocks.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    shapes = list(SHAPES)
    if args.only:
        keys = [k.strip() for k in args.only.split(",") if k.strip()]
        unknown = set(keys) - {s.key for s in SHAPES}
        if unknown:
            raise SystemExit(f"--only: unknown shapes {sorted(unknown)}")
        shapes = [s for s in SHAPES if s.key in keys]
    prepare(args)
    if args.load_only:
        return 0
    url = args.database_url
    stored = stored_load_report(url)
    print("\n".join(machine(url)), flush=True)
    if stored:
        print("load (when this database was loaded):\n" + stored, flush=True)
    pools = sample_pools(url, args.seed, total=args.total)
    if args.explain:
        explain(url, shapes, pools, args.seed)
        if args.no_measure:
            return 0
    figures: list[Figure] = []
    with (
        serving(url, args.workers, args.hub_root) as server,
        # As the hub's own connections (hub.store.sql): no server-side prepared statements.
        psycopg.connect(libpq_url(url), autocommit=True, prepare_threshold=None) as conn,
    ):
        print(f"load average before: {_loadavg()}; hub from {args.hub_root}", flush=True)
        print(f"hub serve (pid {server.proc.pid}, {args.workers} worker) on port {server.port}; "
              f"{args.runs} runs per shape after {args.warmup} warm-up runs, over HTTP, "
              "one request at a time; hand SQL through psycopg", flush=True)  # fmt: skip
        client = HubClient(server.port)
        try:
            for shape in shapes:
                before = wait_for_idle(args.idle, args.patience)
                figure = measure(
                    shape, pools, client, conn, args.runs, args.warmup, args.budget, args.seed
                )
                figure.busy_before = before
                figures.append(figure)
                print(report([figure])[2], flush=True)
                for problem in figure.mismatches[:3]:
                    print(f"    ! {problem}", flush=True)
        finally:
            client.close()
    print(f"load average after: {_loadavg()}")
    print()
    print("\n".join(report(figures)))
    print()
    print("\n".join(markdown(figures)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
