"""Helpers for the feed ingestion tests: Synthea-style CSV files and store queries.

The CSV headers are those of Synthea's CSV export (patients, encounters,
conditions, observations); rows are built from keyword arguments so a test
states only the cells it is about.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event, func, select

from hub.ingest.mapping import resource_id
from hub.ingest.service import IngestService, Summary
from hub.store.schema import resource_history, resources

SOURCE = "synthea"


def _columns(header: str) -> list[str]:
    return header.split(",")


PATIENT_COLUMNS = _columns(
    "Id,BIRTHDATE,DEATHDATE,SSN,DRIVERS,PASSPORT,PREFIX,FIRST,LAST,SUFFIX,MAIDEN,MARITAL,"
    "RACE,ETHNICITY,GENDER,BIRTHPLACE,ADDRESS,CITY,STATE,COUNTY,ZIP,LAT,LON,"
    "HEALTHCARE_EXPENSES,HEALTHCARE_COVERAGE"
)
ENCOUNTER_COLUMNS = _columns(
    "Id,START,STOP,PATIENT,ORGANIZATION,PROVIDER,PAYER,ENCOUNTERCLASS,CODE,DESCRIPTION,"
    "BASE_ENCOUNTER_COST,TOTAL_CLAIM_COST,PAYER_COVERAGE,REASONCODE,REASONDESCRIPTION"
)
CONDITION_COLUMNS = _columns("START,STOP,PATIENT,ENCOUNTER,CODE,DESCRIPTION")
OBSERVATION_COLUMNS = _columns("DATE,PATIENT,ENCOUNTER,CATEGORY,CODE,DESCRIPTION,VALUE,UNITS,TYPE")


def patient_row(pid: str, **cells: str) -> dict[str, str]:
    row = {
        "Id": pid,
        "BIRTHDATE": "1961-07-04",
        "DEATHDATE": "",
        "SSN": "999-53-4412",
        "DRIVERS": "S99912345",
        "PASSPORT": "",
        "PREFIX": "Mrs.",
        "FIRST": "Jacinta",
        "LAST": "Kuhlman",
        "SUFFIX": "",
        "MAIDEN": "",
        "MARITAL": "M",
        "RACE": "white",
        "ETHNICITY": "nonhispanic",
        "GENDER": "F",
        "BIRTHPLACE": "Worcester Massachusetts US",
        "ADDRESS": "848 Bernier Lane",
        "CITY": "Springfield",
        "STATE": "Massachusetts",
        "COUNTY": "Hampden County",
        "ZIP": "01104",
        "LAT": "42.1",
        "LON": "-72.5",
        "HEALTHCARE_EXPENSES": "271227.08",
        "HEALTHCARE_COVERAGE": "1334.88",
    }
    row.update(cells)
    return row


def encounter_row(eid: str, pid: str, **cells: str) -> dict[str, str]:
    row = {
        "Id": eid,
        "START": "2019-02-11T04:28:49Z",
        "STOP": "2019-02-11T04:43:49Z",
        "PATIENT": pid,
        "ORGANIZATION": "ef58ea08-d883-3957-8300-150554edc8fb",
        "PROVIDER": "0f2f8f8e-6e4d-3a8f-9b0c-5a1d6f0b8e21",
        "PAYER": "",
        "ENCOUNTERCLASS": "wellness",
        "CODE": "162673000",
        "DESCRIPTION": "General examination of patient (procedure)",
        "BASE_ENCOUNTER_COST": "129.16",
        "TOTAL_CLAIM_COST": "129.16",
        "PAYER_COVERAGE": "0.0",
        "REASONCODE": "",
        "REASONDESCRIPTION": "",
    }
    row.update(cells)
    return row


def condition_row(pid: str, **cells: str) -> dict[str, str]:
    row = {
        "START": "2019-02-11",
        "STOP": "",
        "PATIENT": pid,
        "ENCOUNTER": "e1000000-0000-0000-0000-000000000001",
        "CODE": "44054006",
        "DESCRIPTION": "Diabetes",
    }
    row.update(cells)
    return row


def observation_row(pid: str, **cells: str) -> dict[str, str]:
    row = {
        "DATE": "2019-02-11T04:28:49Z",
        "PATIENT": pid,
        "ENCOUNTER": "e1000000-0000-0000-0000-000000000001",
        "CATEGORY": "vital-signs",
        "CODE": "8302-2",
        "DESCRIPTION": "Body Height",
        "VALUE": "172.5",
        "UNITS": "cm",
        "TYPE": "numeric",
    }
    row.update(cells)
    return row


def csv_bytes(columns: Sequence[str], rows: Iterable[dict[str, str]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row.get(c, "") for c in columns])
    return out.getvalue().encode("utf-8")


def rid(resource_type: str, *key: str) -> str:
    """The deterministic id the Synthea mappings give a resource."""
    return resource_id(SOURCE, resource_type, list(key))


def ingest(
    service: IngestService, mapping: str, data: bytes, origin: str, *, wait: bool = True
) -> Summary:
    return service.ingest("csv", mapping, io.BytesIO(data), origin, wait=wait)


def read(service: IngestService, resource_type: str, resource_id_: str) -> dict[str, Any]:
    version = service.ctx.repo.read(resource_type, resource_id_)
    assert version is not None, f"{resource_type}/{resource_id_} was not written"
    assert version.content is not None, f"{resource_type}/{resource_id_} is deleted"
    body: dict[str, Any] = json.loads(version.content)
    return body


def version_counts(engine: Engine, resource_type: str | None = None) -> dict[str, int]:
    """Versions per resource ("Type/id" -> n) in the history table."""
    stmt = select(resource_history.c.res_type, resource_history.c.res_id, func.count()).group_by(
        resource_history.c.res_type, resource_history.c.res_id
    )
    if resource_type:
        stmt = stmt.where(resource_history.c.res_type == resource_type)
    with engine.connect() as conn:
        return {f"{r[0]}/{r[1]}": int(r[2]) for r in conn.execute(stmt)}


def resource_count(engine: Engine, resource_type: str) -> int:
    stmt = select(func.count()).select_from(resources).where(resources.c.res_type == resource_type)
    with engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one())


def history(service: IngestService, resource_type: str, resource_id_: str) -> list[dict[str, Any]]:
    """Every version of a resource, oldest first."""
    with service.ctx.repo.snapshot() as tx:
        versions = tx.history(resource_type, resource_id_, None, None, 1000)
    return [
        json.loads(v.content) for v in sorted(versions, key=lambda v: v.version_id) if v.content
    ]


def wait_for(condition: Callable[[], bool], timeout: float, what: str, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


class HeldDispatcher:
    """Records the ids it is given and processes nothing: messages stay open."""

    def __init__(self) -> None:
        self.submitted: list[int] = []

    def submit(self, message_ids: Sequence[int]) -> None:
        self.submitted.extend(message_ids)

    def backlog(self) -> int:
        return 0  # as if every message sent had been lost

    def check(self, timeout: float) -> None:
        pass

    def close(self) -> None:
        pass


def hold(service: IngestService) -> HeldDispatcher:
    """Make `service` store without processing (its ingest then returns at once)."""
    held = HeldDispatcher()
    service.dispatcher = held
    service.mode = "held"
    return held


@contextmanager
def statements(service: IngestService) -> Iterator[list[str]]:
    """The SQL statements the block sends, through the message store's engine and the
    repository's."""
    engines = {service.store.engine, service.ctx.repo.engine}  # type: ignore[attr-defined]
    sent: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        sent.append(statement)

    for engine in engines:
        event.listen(engine, "before_cursor_execute", count)
    try:
        yield sent
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", count)
