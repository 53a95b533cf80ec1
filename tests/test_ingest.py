"""Feed ingestion: Synthea CSV files through the message store and the pipeline.

Runs on SQLite and PostgreSQL: the service with the inline dispatcher (and the
embedded thread pool where delivery order or the sweeper matter), then the
same over HTTP (`POST /ingest/csv`, `/messages`, `$lineage`) and the CLI.
Covered: deterministic ids (a resend is all duplicates, a corrected row is
version 2), duplicate delivery processed once, bad rows (unparseable date,
unknown code, missing value or column, short row, not UTF-8) rejected with
file, line and column and kept raw while the rest goes through, Provenance and
lineage for every write, in-order application of out-of-order deliveries, dead
letters and retry, replay after a mapping change (and of an older message),
the sweeper re-sending a message a crash left in `processing`, and an inline
run finishing what an interrupted one left open. Real Celery processes are in
test_ingest_celery.py.
"""

from __future__ import annotations

import base64
import io
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import ROOT, race
from fastapi.testclient import TestClient
from ingest_fixtures import (
    CONDITION_COLUMNS,
    ENCOUNTER_COLUMNS,
    OBSERVATION_COLUMNS,
    PATIENT_COLUMNS,
    HeldDispatcher,
    condition_row,
    csv_bytes,
    encounter_row,
    history,
    hold,
    ingest,
    observation_row,
    patient_row,
    read,
    resource_count,
    rid,
    version_counts,
    wait_for,
)
from ingest_fixtures import (
    statements as counted,
)
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

import hub.ingest.pipeline as pipeline_module
import hub.interactions.executor as executor_module
from hub.cli import main as cli
from hub.errors import Busy, Conflict
from hub.ingest.dispatch import InlineDispatcher, ThreadDispatcher, follow, follow_many, sweep
from hub.ingest.messages import DEAD, DONE, FAILED, PROCESSING, RECEIVED, WAITING, now
from hub.ingest.pipeline import MESSAGE_SYSTEM, Outcome
from hub.ingest.service import IngestService
from hub.interactions import writes
from hub.interactions.context import Context
from hub.settings import Settings
from hub.store import SqlRepository
from hub.store.schema import messages

P1 = "b9c610cd-28a6-4636-ccb6-c7a0d2a4cb85"
P2 = "1d604da9-9a81-4ba9-80c2-de3375d59b40"
P3 = "8d4c4326-e9de-4f45-9a4c-f8c36bff89ae"
E1 = "e1000000-0000-0000-0000-000000000001"
E2 = "e1000000-0000-0000-0000-000000000002"
PATIENTS = "synthea-patients"


@pytest.fixture()
def settings(database_url: str) -> Settings:
    """The conftest settings, with few attempts so dead letters come quickly."""
    return Settings(
        database_url=database_url, public_base_url="http://hub.test/fhir", ingest_max_attempts=2
    )


@pytest.fixture()
def service(ctx: Context, settings: Settings) -> Iterator[IngestService]:
    svc = IngestService(ctx, settings, dispatcher="inline")
    yield svc
    svc.close()


def no_sleep(_: float) -> None:
    pass


def patients(*rows: dict[str, str]) -> bytes:
    return csv_bytes(PATIENT_COLUMNS, rows)


def line_of(columns: list[str], row: dict[str, str]) -> bytes:
    """One row exactly as the adapter stores it (after the header line)."""
    return csv_bytes(columns, [row]).split(b"\n", 1)[1]


def message_of(service: IngestService, origin: str) -> Any:
    found = [m for m in service.store.find(limit=1000) if m.origin == origin]
    assert len(found) == 1, f"expected one message from {origin}, found {len(found)}"
    return found[0]


# --- mapping Synthea files ----------------------------------------------------


def test_synthea_files_become_patients_encounters_conditions_and_observations(
    service: IngestService,
) -> None:
    engine = service.store.engine
    summaries = [
        ingest(
            service,
            PATIENTS,
            patients(
                patient_row(P1),
                patient_row(
                    P2,
                    FIRST="Rolando",
                    LAST="Hodkiewicz",
                    GENDER="M",
                    MARITAL="",
                    PREFIX="Mr.",
                    DEATHDATE="2020-03-01",
                    CITY="",
                    ADDRESS="",
                ),
            ),
            "patients.csv",
        ),
        ingest(
            service,
            "synthea-encounters",
            csv_bytes(
                ENCOUNTER_COLUMNS,
                [
                    encounter_row(E1, P1),
                    encounter_row(
                        E2,
                        P2,
                        ENCOUNTERCLASS="emergency",
                        REASONCODE="55822004",
                        REASONDESCRIPTION="Hyperlipidemia",
                    ),
                ],
            ),
            "encounters.csv",
        ),
        ingest(
            service,
            "synthea-conditions",
            csv_bytes(
                CONDITION_COLUMNS,
                [
                    condition_row(P1),
                    condition_row(
                        P2,
                        CODE="40055000",
                        DESCRIPTION="Chronic sinusitis (disorder)",
                        STOP="2020-01-05",
                        ENCOUNTER=E2,
                    ),
                ],
            ),
            "conditions.csv",
        ),
        ingest(
            service,
            "synthea-observations",
            csv_bytes(
                OBSERVATION_COLUMNS,
                [
                    observation_row(P1),
                    observation_row(
                        P1,
                        CODE="72166-2",
                        DESCRIPTION="Tobacco smoking status",
                        VALUE="Never smoker",
                        UNITS="",
                        TYPE="text",
                        CATEGORY="survey",
                    ),
                ],
            ),
            "observations.csv",
        ),
    ]
    for summary in summaries:
        assert (summary.units, summary.accepted, summary.done) == (2, 2, 2), summary.to_json()
        assert (summary.rejected, summary.dead, summary.open) == (0, 0, 0), summary.errors
        assert summary.resources == 2

    patient = read(service, "Patient", rid("Patient", P1))
    assert patient["identifier"][0] == {
        "system": "https://github.com/synthetichealth/synthea",
        "value": P1,
    }
    assert patient["name"] == [
        {"use": "official", "prefix": ["Mrs."], "given": ["Jacinta"], "family": "Kuhlman"}
    ]
    assert patient["gender"] == "female"
    assert patient["birthDate"] == "1961-07-04"
    assert patient["maritalStatus"]["coding"][0]["code"] == "M"
    assert patient["address"] == [
        {
            "line": ["848 Bernier Lane"],
            "city": "Springfield",
            "state": "Massachusetts",
            "postalCode": "01104",
            "country": "US",
        }
    ]
    assert patient["meta"]["versionId"] == "1"
    other = read(service, "Patient", rid("Patient", P2))
    assert other["gender"] == "male"
    assert other["deceasedDateTime"] == "2020-03-01"
    assert "maritalStatus" not in other
    assert other["address"] == [{"state": "Massachusetts", "postalCode": "01104"}]

    encounter = read(service, "Encounter", rid("Encounter", E2))
    assert encounter["status"] == "finished"
    assert encounter["class"]["code"] == "EMER"
    assert encounter["subject"] == {"reference": f"Patient/{rid('Patient', P2)}"}
    assert encounter["period"] == {"start": "2019-02-11T04:28:49Z", "end": "2019-02-11T04:43:49Z"}
    assert encounter["reasonCode"][0]["coding"][0]["code"] == "55822004"
    assert "reasonCode" not in read(service, "Encounter", rid("Encounter", E1))

    active = read(service, "Condition", rid("Condition", P1, "2019-02-11", "44054006"))
    assert active["clinicalStatus"]["coding"][0]["code"] == "active"
    assert active["onsetDateTime"] == "2019-02-11"
    assert active["subject"]["reference"] == f"Patient/{rid('Patient', P1)}"
    resolved = read(service, "Condition", rid("Condition", P2, "2019-02-11", "40055000"))
    assert resolved["clinicalStatus"]["coding"][0]["code"] == "resolved"
    assert resolved["abatementDateTime"] == "2020-01-05"
    assert resolved["encounter"]["reference"] == f"Encounter/{rid('Encounter', E2)}"

    height = read(service, "Observation", rid("Observation", P1, "2019-02-11T04:28:49Z", "8302-2"))
    assert height["status"] == "final"
    assert height["code"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "8302-2",
        "display": "Body Height",
    }
    assert height["valueQuantity"] == {
        "value": 172.5,
        "unit": "cm",
        "system": "http://unitsofmeasure.org",
        "code": "cm",
    }
    assert height["category"][0]["coding"][0]["code"] == "vital-signs"
    assert height["effectiveDateTime"] == "2019-02-11T04:28:49Z"
    smoking = read(
        service, "Observation", rid("Observation", P1, "2019-02-11T04:28:49Z", "72166-2")
    )
    assert smoking["valueString"] == "Never smoker"
    assert "valueQuantity" not in smoking

    for resource_type in ("Patient", "Encounter", "Condition", "Observation"):
        assert resource_count(engine, resource_type) == 2, resource_type
    assert resource_count(engine, "Provenance") == 8


def test_resending_a_file_is_all_duplicates_and_writes_no_version(
    service: IngestService,
) -> None:
    data = patients(patient_row(P1), patient_row(P2, FIRST="Rolando"))
    first = ingest(service, PATIENTS, data, "patients.csv")
    before = version_counts(service.store.engine)

    again = ingest(service, PATIENTS, data, "patients-resent.csv")

    assert (again.units, again.accepted, again.duplicates) == (2, 0, 2)
    assert again.message_ids == first.message_ids  # a duplicate answers its first message
    assert again.done == 2 and again.rejected == 0
    assert version_counts(service.store.engine) == before
    assert len(service.store.find(limit=100)) == 2


def test_a_corrected_row_updates_the_same_resource_as_version_2(service: IngestService) -> None:
    ingest(service, PATIENTS, patients(patient_row(P1), patient_row(P2)), "monday.csv")
    corrected = ingest(
        service,
        PATIENTS,
        patients(patient_row(P1, ADDRESS="1 Main Street", CITY="Boston"), patient_row(P2)),
        "tuesday.csv",
    )

    assert (corrected.accepted, corrected.duplicates, corrected.done) == (1, 1, 2)
    assert corrected.resources == 1
    patient = read(service, "Patient", rid("Patient", P1))
    assert patient["meta"]["versionId"] == "2"
    assert patient["address"][0]["city"] == "Boston"
    assert [h["address"][0]["city"] for h in history(service, "Patient", rid("Patient", P1))] == [
        "Springfield",
        "Boston",
    ]
    assert version_counts(service.store.engine, "Patient") == {
        f"Patient/{rid('Patient', P1)}": 2,
        f"Patient/{rid('Patient', P2)}": 1,
    }


def test_the_same_row_twice_in_one_file_is_one_message(service: IngestService) -> None:
    row = patient_row(P1)
    summary = ingest(service, PATIENTS, patients(row, patient_row(P2), row), "patients.csv")

    assert (summary.units, summary.accepted, summary.duplicates) == (3, 2, 1)
    assert summary.message_ids[0] == summary.message_ids[2]
    assert summary.done == 2 and summary.resources == 2
    assert version_counts(service.store.engine, "Patient")[f"Patient/{rid('Patient', P1)}"] == 1


# --- duplicate delivery -------------------------------------------------------


def test_a_message_delivered_twice_is_processed_once(service: IngestService) -> None:
    held = hold(service)
    summary = ingest(service, PATIENTS, patients(patient_row(P1)), "patients.csv", wait=False)
    assert held.submitted == summary.message_ids
    (mid,) = summary.message_ids

    assert service.pipeline.process(mid) == Outcome.DONE
    assert service.pipeline.process(mid) == Outcome.SKIPPED
    assert service.store.get(mid).attempts == 1  # type: ignore[union-attr]
    assert version_counts(service.store.engine) == {
        f"Patient/{rid('Patient', P1)}": 1,
        f"Provenance/message-{mid}": 1,
    }


def test_concurrent_deliveries_of_one_message_write_once(service: IngestService) -> None:
    hold(service)
    data = patients(patient_row(P1), patient_row(P2))
    ids = ingest(service, PATIENTS, data, "patients.csv", wait=False).message_ids
    # Two deliveries of each message at once.
    outcomes = race(4, lambda i: service.pipeline.process(ids[i // 2]))
    assert Counter(outcomes) == {Outcome.DONE: 2, Outcome.SKIPPED: 2}
    assert set(version_counts(service.store.engine).values()) == {1}
    assert service.store.counts(ids) == {DONE: 2}


# --- bad rows -----------------------------------------------------------------


BAD_ROWS = [
    pytest.param(
        {"BIRTHDATE": "1961-13-45"},
        "BIRTHDATE",
        "'1961-13-45' is not a date in the format %Y-%m-%d",
        id="unparseable-date",
    ),
    pytest.param(
        {"GENDER": "X"},
        "GENDER",
        "unknown code 'X' (table gender has M, F, U, O)",
        id="unknown-code",
    ),
    pytest.param({"LAST": ""}, "LAST", "the required field is empty", id="required-empty"),
]


@pytest.mark.parametrize(("cells", "column", "reason"), BAD_ROWS)
def test_a_bad_row_is_rejected_with_file_line_and_column_and_kept_raw(
    service: IngestService, cells: dict[str, str], column: str, reason: str
) -> None:
    bad = patient_row(P2, **cells)
    # A quoted cell spanning two lines: the bad row starts on line 4, not 3.
    rows = [patient_row(P1, ADDRESS="12 Elm St\nApt 4"), bad, patient_row(P3)]

    summary = ingest(service, PATIENTS, patients(*rows), "patients.csv")

    assert (summary.units, summary.done, summary.rejected, summary.open) == (3, 2, 1, 0)
    error = f"patients.csv line 4, column {column}: {reason}"
    assert summary.errors == [error]
    message = message_of(service, "patients.csv line 4")
    assert message.status == FAILED
    assert message.error == error
    assert message.raw == csv_bytes(PATIENT_COLUMNS, [bad])
    assert message.produced == []
    assert service.ctx.repo.read("Patient", rid("Patient", P2)) is None
    assert read(service, "Patient", rid("Patient", P1))["address"][0]["line"] == [
        "12 Elm St\nApt 4"
    ]
    assert read(service, "Patient", rid("Patient", P3))["id"] == rid("Patient", P3)


def test_a_row_short_of_columns_names_the_first_missing_one(service: IngestService) -> None:
    header = ",".join(PATIENT_COLUMNS).encode()
    short = f"{P2},1970-01-01,,999-11-2222".encode()
    data = (
        b"\n".join(
            [
                header,
                line_of(PATIENT_COLUMNS, patient_row(P1)).rstrip(),
                short,
                line_of(PATIENT_COLUMNS, patient_row(P3)).rstrip(),
            ]
        )
        + b"\n"
    )

    summary = ingest(service, PATIENTS, data, "patients.csv")

    assert (summary.done, summary.rejected) == (2, 1)
    message = message_of(service, "patients.csv line 3")
    assert message.error == (
        "patients.csv line 3, column DRIVERS: the row has 4 columns where the header has 25"
    )
    assert message.raw == header + b"\n" + short + b"\n"


def test_a_row_not_in_utf8_is_rejected_naming_its_column_and_kept_as_sent(
    client: TestClient,
) -> None:
    data = patients(patient_row(P1), patient_row(P2, LAST="Mxller"), patient_row(P3))
    data = data.replace(b"Mxller", b"M\xfcller")  # Latin-1, as legacy feeds send it

    body = post_file(client, PATIENTS, data)

    assert (body["done"], body["rejected"]) == (2, 1)
    assert body["errors"] == ["POST /ingest/csv line 3, column LAST: the value is not UTF-8 text"]
    shown = client.get(f"/messages/{body['messages'][1]}").json()
    assert shown["status"] == FAILED
    assert base64.b64decode(shown["raw"]["base64"]) == data.split(b"\n")[0] + b"\n" + (
        data.split(b"\n")[2] + b"\n"
    )


def test_a_file_without_a_required_column_rejects_each_row_naming_it(
    service: IngestService,
) -> None:
    columns = [c for c in PATIENT_COLUMNS if c != "GENDER"]
    summary = ingest(
        service, PATIENTS, csv_bytes(columns, [patient_row(P1), patient_row(P2)]), "patients.csv"
    )

    assert (summary.done, summary.rejected) == (0, 2)
    assert summary.errors == [
        f"patients.csv line {n}, column GENDER: the required field is missing" for n in (2, 3)
    ]
    assert resource_count(service.store.engine, "Patient") == 0


# --- Provenance and lineage ---------------------------------------------------


def test_every_written_version_has_provenance_and_lineage(service: IngestService) -> None:
    first = ingest(service, PATIENTS, patients(patient_row(P1)), "patients.csv")
    # The encounter the observation refers to arrives first: otherwise the observation waits.
    ingest(
        service,
        "synthea-encounters",
        csv_bytes(ENCOUNTER_COLUMNS, [encounter_row(E1, P1)]),
        "encounters.csv",
    )
    obs = ingest(
        service,
        "synthea-observations",
        csv_bytes(OBSERVATION_COLUMNS, [observation_row(P1)]),
        "observations.csv",
    )
    fix = ingest(
        service, PATIENTS, patients(patient_row(P1, BIRTHDATE="1961-07-05")), "patients-fix.csv"
    )
    pid = rid("Patient", P1)
    oid = rid("Observation", P1, "2019-02-11T04:28:49Z", "8302-2")

    for summary, target in (
        (first, f"Patient/{pid}/_history/1"),
        (obs, f"Observation/{oid}/_history/1"),
        (fix, f"Patient/{pid}/_history/2"),
    ):
        (mid,) = summary.message_ids
        message = service.store.get(mid)
        assert message is not None
        assert message.produced == [target, f"Provenance/message-{mid}/_history/1"]
        provenance = read(service, "Provenance", f"message-{mid}")
        assert provenance["target"] == [{"reference": target}]
        (entity,) = provenance["entity"]
        assert entity["role"] == "source"
        assert entity["what"]["identifier"] == {"system": MESSAGE_SYSTEM, "value": str(mid)}
        assert provenance["agent"][0]["who"]["identifier"]["value"] == "synthea"
        lines = service.store.lineage_for_message(mid)
        assert lines and all(line["resource"] == target for line in lines)

    lineage = service.store.lineage_of("Patient", pid)
    (fix_id,) = fix.message_ids
    (first_id,) = first.message_ids
    assert {
        "version": 1,
        "element": "Patient.birthDate",
        "source": "BIRTHDATE",
        "message": first_id,
        "mapping": PATIENTS,
        "mappingVersion": "1",
    } in lineage
    assert {
        "version": 2,
        "element": "Patient.birthDate",
        "source": "BIRTHDATE",
        "message": fix_id,
        "mapping": PATIENTS,
        "mappingVersion": "1",
    } in lineage
    elements = {(e["element"], e["source"]) for e in lineage}
    assert {
        ("Patient.gender", "GENDER"),
        ("Patient.name.family", "LAST"),
        ("Patient.identifier.value", "Id"),
        ("Patient.address.city", "CITY"),
    } <= elements
    (obs_id,) = obs.message_ids
    assert {
        "version": 1,
        "element": "Observation.valueQuantity.value",
        "source": "VALUE",
        "message": obs_id,
        "mapping": "synthea-observations",
        "mappingVersion": "1",
    } in service.store.lineage_of("Observation", oid)


# --- out-of-order delivery ----------------------------------------------------


def three_rows_of_one_patient(service: IngestService) -> list[int]:
    """Stored, not processed: P1 as One, then Two, then Three."""
    hold(service)
    rows = [patient_row(P1, LAST=name) for name in ("One", "Two", "Three")]
    return ingest(service, PATIENTS, patients(*rows), "patients.csv", wait=False).message_ids


def test_the_worker_finishing_a_message_follows_with_those_that_waited(
    service: IngestService,
) -> None:
    first, second, third = three_rows_of_one_patient(service)
    # Delivered last first: each finds an earlier one open, and is dropped, not retried.
    assert service.pipeline.process(third) == Outcome.DEFERRED
    assert service.pipeline.process(second) == Outcome.DEFERRED
    assert service.pipeline.process(first) == Outcome.DONE
    resent: list[int] = []
    assert follow(service.pipeline, first, resent.append, limit=1) == 1
    assert resent == [third]  # past the limit, the next goes back to the dispatcher
    assert follow(service.pipeline, second, resent.append) == 1
    assert resent == [third]
    assert service.store.counts([first, second, third]) == {DONE: 3}
    versions = history(service, "Patient", rid("Patient", P1))
    assert [v["name"][0]["family"] for v in versions] == ["One", "Two", "Three"]
    assert follow(service.pipeline, third, resent.append) == 0  # nothing left to follow


@pytest.mark.parametrize("kind", ["inline", "threads"])
def test_out_of_order_delivery_is_applied_in_message_order(
    service: IngestService, kind: str
) -> None:
    hold(service)
    names = ["One", "Two", "Three", "Four"]
    rows = [r for name in names for r in (patient_row(P1, LAST=name), patient_row(P2, LAST=name))]
    ids = ingest(service, PATIENTS, patients(*rows), "patients.csv", wait=False).message_ids
    assert len(ids) == 8

    later, earlier = ids[2], ids[0]
    assert service.pipeline.process(later) == Outcome.DEFERRED  # P1's first row is still open
    assert service.store.get(later).status == WAITING  # type: ignore[union-attr]
    dispatcher = (
        InlineDispatcher(service.pipeline, sleep=no_sleep)
        if kind == "inline"
        else ThreadDispatcher(service.pipeline, threads=4)
    )
    try:
        dispatcher.submit(list(reversed(ids)))
        done = service.wait(ids, timeout=60)
    finally:
        dispatcher.close()

    assert done.done == 8, done.to_json()
    for pid in (P1, P2):
        versions = history(service, "Patient", rid("Patient", pid))
        assert [v["name"][0]["family"] for v in versions] == names
        assert [v["meta"]["versionId"] for v in versions] == ["1", "2", "3", "4"]
        assert read(service, "Patient", rid("Patient", pid))["name"][0]["family"] == "Four"
    first = service.store.get(earlier)
    assert first is not None and first.produced[0].endswith("/_history/1")


# --- transient errors, dead letters, retry --------------------------------------


def failing_save(times: int, error: Exception) -> Any:
    """`save` that raises `error` at the Provenance write, `times` times."""
    real = writes.save
    calls = {"failed": 0}

    def save(*args: Any, **kwargs: Any) -> Any:
        resource = args[4]
        if resource["resourceType"] == "Provenance" and calls["failed"] < times:
            calls["failed"] += 1
            raise error
        return real(*args, **kwargs)

    save.calls = calls  # type: ignore[attr-defined]
    return save


TRANSIENT = [
    pytest.param(Busy("the store is busy (simulated)"), "Busy", id="busy"),
    pytest.param(Conflict("lost a race (simulated)"), "Conflict", id="conflict"),
    pytest.param(
        OperationalError("UPDATE", {}, Exception("could not serialize access")),
        "OperationalError",
        id="dbapi",
    ),
]


@pytest.mark.parametrize(("error", "name"), TRANSIENT)
def test_transient_errors_end_in_dead_letter_and_retry_revives(
    service: IngestService, monkeypatch: pytest.MonkeyPatch, error: Exception, name: str
) -> None:
    assert isinstance(service.dispatcher, InlineDispatcher)
    service.dispatcher.sleep = no_sleep
    monkeypatch.setattr(executor_module, "save", failing_save(100, error))

    summary = ingest(service, PATIENTS, patients(patient_row(P1), patient_row(P2)), "patients.csv")

    assert (summary.dead, summary.done, summary.open) == (2, 0, 0)
    mid = summary.message_ids[0]
    message = service.store.get(mid)
    assert message is not None and message.status == DEAD
    assert message.attempts == 2  # HUB_INGEST_MAX_ATTEMPTS
    assert message.error is not None
    assert message.error.startswith(f"after 2 attempts: {name}: ")
    # The Patient was written in the same transaction as the failed Provenance: rolled back.
    assert resource_count(service.store.engine, "Patient") == 0
    assert [m.id for m in service.store.find(DEAD)] == sorted(summary.message_ids, reverse=True)

    monkeypatch.setattr(executor_module, "save", failing_save(0, error))
    assert service.retry([mid]) == [mid]
    revived = service.store.get(mid)
    assert revived is not None
    assert (revived.status, revived.attempts, revived.error) == (DONE, 1, None)
    assert read(service, "Patient", rid("Patient", P1))["meta"]["versionId"] == "1"
    assert service.retry([mid]) == []  # done: nothing to retry
    assert service.store.get(summary.message_ids[1]).status == DEAD  # type: ignore[union-attr]


def test_a_transient_error_below_the_limit_is_retried_to_success(
    ctx: Context, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = IngestService(
        ctx, settings.model_copy(update={"ingest_max_attempts": 4}), dispatcher="inline"
    )
    assert isinstance(service.dispatcher, InlineDispatcher)
    slept: list[float] = []
    service.dispatcher.sleep = slept.append
    flaky = failing_save(3, Busy("busy"))
    monkeypatch.setattr(executor_module, "save", flaky)

    summary = ingest(service, PATIENTS, patients(patient_row(P1)), "patients.csv")

    assert summary.done == 1
    message = service.store.get(summary.message_ids[0])
    assert message is not None and (message.attempts, message.error) == (4, None)
    assert flaky.calls["failed"] == 3
    assert slept == [1.0, 2.0, 4.0]  # backoff between the rounds
    assert version_counts(service.store.engine, "Patient") == {f"Patient/{rid('Patient', P1)}": 1}


def test_a_message_that_never_finishes_ends_dead(
    service: IngestService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message whose processing crashes every time (a poison message) is not sent forever."""
    hold(service)
    (mid,) = ingest(
        service, PATIENTS, patients(patient_row(P1)), "patients.csv", wait=False
    ).message_ids

    def crash(_: Any, **__: Any) -> None:
        raise RuntimeError("the worker fell over")

    monkeypatch.setattr(pipeline_module, "validate", crash)
    assert service.pipeline.process(mid) == Outcome.RETRY
    assert service.store.get(mid).status == PROCESSING  # type: ignore[union-attr]
    assert service.pipeline.process(mid) == Outcome.DEAD  # HUB_INGEST_MAX_ATTEMPTS is 2
    message = service.store.get(mid)
    assert message is not None and message.status == DEAD
    assert message.error is not None and "the worker fell over" in message.error


def test_a_message_whose_workers_die_ends_dead(service: IngestService) -> None:
    """Workers killed while processing it (each attempt counted, none finished): dead."""
    hold(service)
    (mid,) = ingest(
        service, PATIENTS, patients(patient_row(P1)), "patients.csv", wait=False
    ).message_ids
    for _ in range(2):  # HUB_INGEST_MAX_ATTEMPTS: two workers took it and died
        assert service.store.note_attempts([mid]) == {mid: _ + 1}
    assert service.pipeline.process(mid) == Outcome.DEAD
    message = service.store.get(mid)
    assert message is not None and message.status == DEAD
    assert message.error is not None and "never finished" in message.error


# --- replay -------------------------------------------------------------------


def write_mapping(folder: Path, name: str, edit: dict[str, str] | None = None) -> None:
    text = (ROOT / "mappings" / "csv" / f"{name}.yaml").read_text(encoding="utf-8")
    for old, new in (edit or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    (folder / "csv").mkdir(parents=True, exist_ok=True)
    (folder / "csv" / f"{name}.yaml").write_text(text, encoding="utf-8")


def test_replay_after_a_mapping_change_corrects_resources_once(
    ctx: Context, settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "mappings"
    # Version 1 lacks the marital status W and names every patient "usual".
    write_mapping(
        folder,
        PATIENTS,
        {
            "    W: {system": "    X: {system",
            "name[0].use: {value: official}": "name[0].use: {value: usual}",
        },
    )
    old = IngestService(ctx, settings.model_copy(update={"mappings_dir": folder}), "inline")
    data = patients(patient_row(P1), patient_row(P2, MARITAL="W"), patient_row(P3))
    first = ingest(old, PATIENTS, data, "patients.csv")
    correction = ingest(old, PATIENTS, patients(patient_row(P3, LAST="Kuhn")), "fix.csv")
    assert (first.done, first.rejected, correction.done) == (2, 1, 1)
    assert read(old, "Patient", rid("Patient", P1))["name"][0]["use"] == "usual"

    write_mapping(folder, PATIENTS)  # the shipped mapping: fixed
    new = IngestService(ctx, settings.model_copy(update={"mappings_dir": folder}), "inline")
    ids = new.store.ids(source="synthea")
    assert new.replay(ids) == ids

    assert new.store.counts(ids) == {DONE: 4}
    engine = new.store.engine
    assert resource_count(engine, "Patient") == 3
    p1, p2 = (read(new, "Patient", rid("Patient", p)) for p in (P1, P2))
    assert p1["name"][0]["use"] == "official" and p1["meta"]["versionId"] == "2"
    assert p2["maritalStatus"]["coding"][0]["code"] == "W" and p2["meta"]["versionId"] == "1"
    # P3: version 1 from the file, 2 its correction, 3 the correction under the new mapping;
    # replaying the older row did not put the old name back.
    assert [
        (v["name"][0]["use"], v["name"][0]["family"])
        for v in history(new, "Patient", rid("Patient", P3))
    ] == [("usual", "Kuhlman"), ("usual", "Kuhn"), ("official", "Kuhn")]
    assert read(new, "Provenance", f"message-{ids[0]}")["target"] == [
        {"reference": f"Patient/{rid('Patient', P1)}/_history/2"}
    ]
    versions = version_counts(engine)

    assert new.replay(ids) == ids  # again: nothing changes
    assert new.store.counts(ids) == {DONE: 4}
    assert version_counts(engine) == versions
    assert resource_count(engine, "Patient") == 3
    # The lineage of older versions is kept.
    assert {
        "version": 1,
        "element": "Patient.birthDate",
        "source": "BIRTHDATE",
        "message": ids[0],
        "mapping": PATIENTS,
        "mappingVersion": "1",
    } in new.store.lineage_of("Patient", rid("Patient", P1))


def test_replaying_an_older_message_does_not_overwrite_newer_data(
    service: IngestService,
) -> None:
    first = ingest(service, PATIENTS, patients(patient_row(P1)), "monday.csv")
    ingest(service, PATIENTS, patients(patient_row(P1, LAST="Kuhn")), "tuesday.csv")
    versions = version_counts(service.store.engine)

    assert service.replay(first.message_ids) == first.message_ids

    assert service.store.counts(first.message_ids) == {DONE: 1}
    assert read(service, "Patient", rid("Patient", P1))["name"][0]["family"] == "Kuhn"
    assert version_counts(service.store.engine) == versions


# --- the sweeper ----------------------------------------------------------------


def test_the_sweeper_resends_a_message_a_crash_left_processing(
    ctx: Context, settings: Settings
) -> None:
    fast = settings.model_copy(update={"ingest_stale_seconds": 0.5, "ingest_sweep_seconds": 0.2})
    service = IngestService(ctx, fast, dispatcher="threads")
    threads = service.dispatcher
    assert isinstance(threads, ThreadDispatcher)
    hold(service)
    ids = ingest(
        service, PATIENTS, patients(patient_row(P1), patient_row(P2)), "patients.csv", wait=False
    ).message_ids
    crashed, _ = ids
    with service.store.engine.begin() as conn:  # a worker died while processing `crashed`
        conn.execute(
            update(messages)
            .where(messages.c.id == crashed)
            .values(status=PROCESSING, attempts=1, updated_at=now() - timedelta(minutes=5))
        )
    assert service.store.stale(timedelta(seconds=60)) == [crashed]

    service.dispatcher, service.mode = threads, "threads"
    service.start_sweeper()
    try:
        wait_for(
            lambda: service.store.counts(ids) == {DONE: 2},
            30,
            "the sweeper to re-send the stuck messages",
        )
    finally:
        service.close()

    message = service.store.get(crashed)
    assert message is not None and message.attempts == 2
    assert version_counts(ctx.repo.engine, "Patient") == {  # type: ignore[attr-defined]
        f"Patient/{rid('Patient', P1)}": 1,
        f"Patient/{rid('Patient', P2)}": 1,
    }
    assert sweep(service.store, service.dispatcher, timedelta(0)) == 0  # nothing left open


def test_sweeps_running_together_send_each_message_once(service: IngestService) -> None:
    hold(service)
    rows = [patient_row(f"sweep-{i}") for i in range(12)]
    ids = ingest(service, PATIENTS, patients(*rows), "patients.csv", wait=False).message_ids
    with service.store.engine.begin() as conn:
        conn.execute(update(messages).values(updated_at=now() - timedelta(minutes=5)))
    dispatchers = [HeldDispatcher() for _ in range(3)]
    race(3, lambda i: sweep(service.store, dispatchers[i], timedelta(minutes=1)))

    sent = sorted(m for d in dispatchers for m in d.submitted)
    assert sent == ids  # each stale message sent once
    assert service.store.stale(timedelta(minutes=1)) == []  # and marked as sent


class Backlogged(HeldDispatcher):
    """A dispatcher whose queue still holds messages no worker has taken."""

    def backlog(self) -> int:
        return 500


def test_sweep_leaves_messages_waiting_in_a_backlog_alone(service: IngestService) -> None:
    hold(service)
    rows = [patient_row(f"queued-{i}") for i in range(3)]
    waiting, taken, queued = ingest(
        service, PATIENTS, patients(*rows), "patients.csv", wait=False
    ).message_ids
    with service.store.engine.begin() as conn:
        conn.execute(update(messages).values(updated_at=now() - timedelta(minutes=5)))
        # A worker took `taken` five minutes ago and never finished (it was killed).
        conn.execute(update(messages).where(messages.c.id == taken).values(status=PROCESSING))
    busy = Backlogged()
    assert sweep(service.store, busy, timedelta(minutes=1)) == 1
    assert busy.submitted == [taken]  # the others are queued, not lost
    idle = HeldDispatcher()  # the backlog is gone (or the broker lost it): the rest are lost
    assert sweep(service.store, idle, timedelta(minutes=1)) == 2
    assert idle.submitted == [waiting, queued]


def test_sweep_sends_what_a_dead_worker_did_not_follow_despite_a_backlog(
    service: IngestService,
) -> None:
    first, second, third = three_rows_of_one_patient(service)
    assert service.pipeline.process(second) == Outcome.DEFERRED  # dropped: `first` is open
    assert service.pipeline.process(first) == Outcome.DONE  # ...and its worker died here
    with service.store.engine.begin() as conn:
        conn.execute(update(messages).values(updated_at=now() - timedelta(minutes=5)))
    busy = Backlogged()
    assert sweep(service.store, busy, timedelta(minutes=1)) == 1
    assert busy.submitted == [second]  # `third` waits behind it, and is followed
    # Anything left ten stale periods is sent whatever the backlog.
    with service.store.engine.begin() as conn:
        conn.execute(update(messages).values(updated_at=now() - timedelta(minutes=11)))
    late = Backlogged()
    assert sweep(service.store, late, timedelta(minutes=1)) == 2
    assert late.submitted == [second, third]


def test_thread_dispatcher_reports_its_backlog(service: IngestService) -> None:
    gate = threading.Event()
    dispatcher = ThreadDispatcher(service.pipeline, threads=1)
    dispatcher.pool.submit(gate.wait, 30)  # the only thread is busy
    try:
        dispatcher.submit([10**9, 10**9 + 1])  # unknown ids: processing them does nothing
        assert dispatcher.backlog() == 2
    finally:
        gate.set()
        dispatcher.close()
    assert dispatcher.backlog() == 0


def test_ingesting_again_inline_finishes_messages_a_crash_left_open(
    ctx: Context, settings: Settings
) -> None:
    crashed = IngestService(ctx, settings, dispatcher="inline")
    hold(crashed)  # `hub ingest` killed after storing the rows, before processing them
    data = patients(patient_row(P1), patient_row(P2))
    ids = ingest(crashed, PATIENTS, data, "patients.csv", wait=False).message_ids
    assert crashed.store.counts(ids) == {RECEIVED: 2}

    rerun = IngestService(ctx, settings, dispatcher="inline")
    result: list[Any] = []
    worker = threading.Thread(
        target=lambda: result.append(ingest(rerun, PATIENTS, data, "patients.csv")), daemon=True
    )
    worker.start()
    worker.join(timeout=60)

    assert not worker.is_alive(), "the second `hub ingest` waits forever on the open rows"
    (summary,) = result
    assert (summary.duplicates, summary.done, summary.open) == (2, 2, 0)
    assert resource_count(rerun.store.engine, "Patient") == 2


def test_ingesting_inline_takes_on_earlier_open_messages_it_waits_for(
    ctx: Context, settings: Settings
) -> None:
    crashed = IngestService(ctx, settings, dispatcher="inline")
    hold(crashed)  # a killed `hub ingest` left Monday's rows open
    monday = ingest(
        crashed, PATIENTS, patients(patient_row(P1), patient_row(P2)), "monday.csv", wait=False
    ).message_ids

    rerun = IngestService(ctx, settings, dispatcher="inline")
    assert isinstance(rerun.dispatcher, InlineDispatcher)
    rerun.dispatcher.sleep = no_sleep
    result: list[Any] = []
    tuesday = patients(patient_row(P1, LAST="Kuhn"))
    worker = threading.Thread(
        target=lambda: result.append(ingest(rerun, PATIENTS, tuesday, "tuesday.csv")), daemon=True
    )
    worker.start()
    worker.join(timeout=60)

    assert not worker.is_alive(), "Tuesday's row waits forever for Monday's"
    assert result[0].done == 1
    # Monday's P1 row went first; its P2 row, which nothing waits for, is left to a sweeper.
    statuses = {m.id: m.status for m in rerun.store.find(limit=10)}
    assert [statuses[m] for m in monday] == [DONE, RECEIVED]
    assert [v["name"][0]["family"] for v in history(rerun, "Patient", rid("Patient", P1))] == [
        "Kuhlman",
        "Kuhn",
    ]


# --- over HTTP ----------------------------------------------------------------


CSV = {"Content-Type": "text/csv"}


def post_file(client: TestClient, mapping: str, data: bytes) -> dict[str, Any]:
    r = client.post(f"/ingest/csv?mapping={mapping}&wait=true", content=data, headers=CSV)
    assert r.status_code == 202, r.text
    body: dict[str, Any] = r.json()
    return body


def test_http_ingest_reports_rows_and_exposes_messages_lineage_and_provenance(
    client: TestClient,
) -> None:
    bad = patient_row(P2, BIRTHDATE="04/31/1961x")
    body = post_file(client, PATIENTS, patients(patient_row(P1), bad, patient_row(P3)))

    assert {
        k: body[k]
        for k in (
            "units",
            "accepted",
            "duplicates",
            "done",
            "rejected",
            "dead",
            "open",
            "resourcesWritten",
        )
    } == {
        "units": 3,
        "accepted": 3,
        "duplicates": 0,
        "done": 2,
        "rejected": 1,
        "dead": 0,
        "open": 0,
        "resourcesWritten": 2,
    }
    assert body["errors"] == [
        "POST /ingest/csv line 3, column BIRTHDATE: '04/31/1961x' is "
        "not a date in the format %Y-%m-%d"
    ]
    good_id, bad_id, _ = body["messages"]

    r = client.get("/messages", params={"status": "failed"})
    assert r.status_code == 200, r.text
    (failed,) = r.json()["messages"]
    assert failed["id"] == bad_id and failed["error"] == body["errors"][0]
    assert failed["origin"] == "POST /ingest/csv line 3"
    r = client.get(f"/messages/{bad_id}")
    assert r.status_code == 200, r.text
    assert r.json()["raw"] == {"text": csv_bytes(PATIENT_COLUMNS, [bad]).decode()}
    assert r.json()["status"] == FAILED and r.json()["lineage"] == []

    pid = rid("Patient", P1)
    r = client.get(f"/messages/{good_id}")
    assert r.status_code == 200, r.text
    shown = r.json()
    assert shown["status"] == DONE and shown["source"] == "synthea"
    assert shown["produced"] == [
        f"Patient/{pid}/_history/1",
        f"Provenance/message-{good_id}/_history/1",
    ]
    assert {
        "resource": f"Patient/{pid}/_history/1",
        "element": "Patient.birthDate",
        "source": "BIRTHDATE",
        "mapping": PATIENTS,
        "mappingVersion": "1",
    } in shown["lineage"]

    r = client.get(f"/fhir/Patient/{pid}/$lineage")
    assert r.status_code == 200, r.text
    parts = [
        {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in e["part"]}
        for e in r.json()["parameter"]
    ]
    assert {
        "version": 1,
        "path": "Patient.birthDate",
        "source": "BIRTHDATE",
        "message": str(good_id),
        "mapping": PATIENTS,
        "mappingVersion": "1",
    } in parts
    assert client.get(f"/fhir/Patient/{rid('Patient', P2)}/$lineage").status_code == 404

    r = client.get(f"/fhir/Provenance/message-{good_id}")
    assert r.status_code == 200, r.text
    assert r.json()["target"] == [{"reference": f"Patient/{pid}/_history/1"}]
    assert r.json()["entity"][0]["what"]["identifier"]["value"] == str(good_id)

    r = client.get("/messages", params={"_count": 2})
    assert [m["id"] for m in r.json()["messages"]] == sorted(body["messages"], reverse=True)[:2]
    assert "before=" in r.json()["next"]


def test_http_duplicate_delivery_is_accepted_and_processed_once(client: TestClient) -> None:
    data = patients(patient_row(P1), patient_row(P2))
    first = post_file(client, PATIENTS, data)
    again = post_file(client, PATIENTS, data)

    assert (first["accepted"], first["duplicates"], first["done"]) == (2, 0, 2)
    assert (again["accepted"], again["duplicates"], again["done"]) == (0, 2, 2)
    assert again["messages"] == first["messages"]
    for pid in (P1, P2):
        r = client.get(f"/fhir/Patient/{rid('Patient', pid)}/_history")
        assert r.json()["total"] == 1
    assert len(client.get("/messages").json()["messages"]) == 2


def test_http_dead_letter_retry_and_replay(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(executor_module, "save", failing_save(100, Busy("busy")))
    body = post_file(client, PATIENTS, patients(patient_row(P1)))
    assert (body["dead"], body["done"]) == (1, 0)
    (mid,) = body["messages"]
    dead = client.get(f"/messages/{mid}").json()
    assert dead["status"] == DEAD and dead["attempts"] == 2
    assert dead["error"].startswith("after 2 attempts: Busy: ")
    assert [m["id"] for m in client.get("/messages?status=dead").json()["messages"]] == [mid]

    monkeypatch.setattr(executor_module, "save", failing_save(0, Busy("busy")))
    r = client.post(f"/messages/{mid}/retry")
    assert r.status_code == 200 and r.json() == {"reopened": [mid]}
    wait_for(
        lambda: client.get(f"/messages/{mid}").json()["status"] == DONE, 30, "the retried message"
    )
    pid = rid("Patient", P1)
    assert client.get(f"/fhir/Patient/{pid}").json()["meta"]["versionId"] == "1"

    assert client.post(f"/messages/{mid}/replay").json() == {"reopened": [mid]}
    wait_for(
        lambda: client.get(f"/messages/{mid}").json()["status"] == DONE, 30, "the replayed message"
    )
    r = client.post("/messages/replay", params={"source": "synthea"})
    assert r.status_code == 200 and r.json() == {"reopened": 1}
    wait_for(
        lambda: client.get(f"/messages/{mid}").json()["status"] == DONE, 30, "the replayed source"
    )
    assert client.get(f"/fhir/Patient/{pid}/_history").json()["total"] == 1
    assert client.get(f"/fhir/Provenance/message-{mid}/_history").json()["total"] == 1
    assert client.post("/messages/999999/retry").json() == {"reopened": []}


def test_http_ingest_errors(client: TestClient) -> None:
    data = patients(patient_row(P1))
    r = client.post("/ingest/csv?mapping=no-such-mapping", content=data, headers=CSV)
    assert r.status_code == 404 and "no-such-mapping" in r.text
    r = client.post(f"/ingest/hl7?mapping={PATIENTS}", content=data, headers=CSV)
    assert r.status_code == 404 and "unknown adapter 'hl7'" in r.text
    r = client.post(f"/ingest/csv?mapping={PATIENTS}", content=b"", headers=CSV)
    assert r.status_code == 400
    assert client.get("/messages?status=lost").status_code == 400
    assert client.get("/messages/424242").status_code == 404
    assert client.get("/messages").json() == {"messages": []}


# --- the CLI ------------------------------------------------------------------


def test_cli_ingest_list_show_retry_and_replay(
    database_url: str, ctx: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUB_DATABASE_URL", database_url)
    monkeypatch.setenv("HUB_DB_POOL_SIZE", "2")
    monkeypatch.delenv("HUB_BROKER_URL", raising=False)
    file = tmp_path / "patients.csv"
    file.write_bytes(patients(patient_row(P1), patient_row(P2, GENDER="Q")))
    cli_runner = CliRunner()
    opened: list[SqlRepository] = []
    from_url = SqlRepository.from_url

    def tracked(url: str, pool_size: int = 20, **options: float) -> SqlRepository:
        opened.append(from_url(url, pool_size, **options))
        return opened[-1]

    monkeypatch.setattr(SqlRepository, "from_url", tracked)

    class Runner:  # each command opens its own engine, never closed: close it at once
        @staticmethod
        def invoke(*args: Any) -> Any:
            result = cli_runner.invoke(*args)
            while opened:
                opened.pop().close()
            return result

    runner = Runner()

    result = runner.invoke(cli, ["ingest", "--adapter", "csv", "--mapping", PATIENTS, str(file)])
    assert result.exit_code == 1, result.output  # a row was rejected
    assert "2 rows (0 duplicates): 1 done, 1 rejected, 0 dead, 0 still open; " in result.stdout
    assert "; 1 resources written, " in result.stdout
    assert "rejected: patients.csv line 3, column GENDER: unknown code 'Q'" in result.stderr

    result = runner.invoke(cli, ["messages", "list", "--status", "failed"])
    assert result.exit_code == 0, result.output
    failed_id = int(result.stdout.split()[0])
    assert "patients.csv line 3" in result.stdout
    result = runner.invoke(cli, ["messages", "show", str(failed_id - 1)])
    assert result.exit_code == 0, result.output
    assert "lineage: BIRTHDATE -> Patient.birthDate" in result.stdout
    assert f"{P1},1961-07-04" in result.stdout

    result = runner.invoke(cli, ["messages", "retry", str(failed_id)])
    assert result.exit_code == 0 and "1 messages retried" in result.stdout
    result = runner.invoke(cli, ["messages", "replay", "--source", "synthea"])
    assert result.exit_code == 0 and "2 messages replayed" in result.stdout
    assert version_counts(ctx.repo.engine, "Patient") == {  # type: ignore[attr-defined]
        f"Patient/{rid('Patient', P1)}": 1
    }
    result = runner.invoke(cli, ["ingest", "--adapter", "csv", "--mapping", PATIENTS, str(file)])
    assert "2 rows (2 duplicates)" in result.stdout


def test_ingest_reads_a_stream_it_is_given(service: IngestService) -> None:
    """The service takes any binary stream (HTTP bodies, files): a BOM is not a column."""
    data = b"\xef\xbb\xbf" + patients(patient_row(P1))
    summary = service.ingest("csv", PATIENTS, io.BytesIO(data), "bom.csv", wait=True)
    assert summary.done == 1
    assert read(service, "Patient", rid("Patient", P1))["identifier"][0]["value"] == P1


# --- batches --------------------------------------------------------------------


def test_a_batch_has_the_outcomes_of_its_messages_one_by_one(service: IngestService) -> None:
    hold(service)
    rows = [
        patient_row(P1, LAST="One"),
        patient_row(P2, BIRTHDATE="04/31/1961x"),
        patient_row(P1, LAST="Two"),
        patient_row(P3),
    ]
    ids = ingest(service, PATIENTS, patients(*rows), "batch.csv", wait=False).message_ids
    outcomes = service.pipeline.process_many(ids)
    assert [outcomes[i] for i in ids] == [Outcome.DONE, Outcome.FAILED, Outcome.DONE, Outcome.DONE]
    # One transaction, applied in message order: P1's rows become versions 1 and 2.
    versions = history(service, "Patient", rid("Patient", P1))
    assert [v["name"][0]["family"] for v in versions] == ["One", "Two"]
    assert read(service, "Patient", rid("Patient", P3))["id"] == rid("Patient", P3)
    bad = service.store.get(ids[1])
    assert bad is not None and bad.status == FAILED and "line 3" in (bad.error or "")
    for i in (ids[0], ids[2], ids[3]):
        message = service.store.get(i)
        assert message is not None and message.status == DONE and message.attempts == 1
        provenance = read(service, "Provenance", f"message-{i}")
        assert provenance["target"][0]["reference"] == message.produced[0]
        assert service.store.lineage_for_message(i)
    # Processing the batch again changes nothing: every message is finished.
    assert set(service.pipeline.process_many(ids).values()) == {Outcome.SKIPPED}


def test_a_batch_waits_behind_an_earlier_open_message_outside_it(
    service: IngestService,
) -> None:
    hold(service)
    rows = [
        patient_row(P1, LAST="One"),
        patient_row(P2, LAST="One"),
        patient_row(P1, LAST="Two"),
        patient_row(P1, LAST="Three"),
    ]
    a, b, c, d = ingest(service, PATIENTS, patients(*rows), "wait.csv", wait=False).message_ids
    outcomes = service.pipeline.process_many([b, c, d])
    assert outcomes == {b: Outcome.DONE, c: Outcome.DEFERRED, d: Outcome.DEFERRED}
    assert [service.store.get(m).status for m in (a, c, d)] == [RECEIVED, WAITING, WAITING]  # type: ignore[union-attr]

    assert service.pipeline.process(a) == Outcome.DONE
    assert follow_many(service.pipeline, [a], lambda m: None) == 2  # c, then d
    versions = history(service, "Patient", rid("Patient", P1))
    assert [v["name"][0]["family"] for v in versions] == ["One", "Two", "Three"]


def test_a_failed_batch_is_tried_again_one_message_at_a_time(
    service: IngestService, monkeypatch: pytest.MonkeyPatch
) -> None:
    hold(service)
    rows = [patient_row(P1), patient_row(P2), patient_row(P3)]
    ids = ingest(service, PATIENTS, patients(*rows), "conflict.csv", wait=False).message_ids
    apply = pipeline_module.Pipeline._apply
    sizes: list[int] = []

    def lose_batches(self: Any, tx: Any, batch: list[Any]) -> Any:
        sizes.append(len(batch))
        if len(batch) > 1:
            raise Conflict("another writer got there first")
        return apply(self, tx, batch)

    monkeypatch.setattr(pipeline_module.Pipeline, "_apply", lose_batches)
    outcomes = service.pipeline.process_many(ids)
    assert outcomes == dict.fromkeys(ids, Outcome.DONE)
    assert sizes == [3, 1, 1, 1]
    for i in ids:  # the failed batch cost no message an attempt of its own
        assert service.store.get(i).attempts == 1  # type: ignore[union-attr]


def test_a_batch_takes_a_few_statements_whatever_its_size(service: IngestService) -> None:
    hold(service)
    rows = [patient_row(f"{n:08d}-0000-4000-8000-000000000000") for n in range(40)]
    ids = ingest(service, PATIENTS, patients(*rows), "many.csv", wait=False).message_ids
    with counted(service) as statements:
        outcomes = service.pipeline.process_many(ids)
    assert set(outcomes.values()) == {Outcome.DONE}
    assert resource_count(service.store.engine, "Patient") == 40
    # One message alone takes about 15; forty together must not take forty times that.
    assert len(statements) <= 30, statements


def test_a_retried_message_holds_back_the_later_ones_about_its_subject(
    service: IngestService, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The batch fails, then its first message fails alone too (transient): the second,
    # about the same patient, must wait for it instead of being written ahead of it.
    hold(service)
    rows = [patient_row(P1, LAST="One"), patient_row(P1, LAST="Two"), patient_row(P2)]
    a, b, c = ingest(service, PATIENTS, patients(*rows), "order.csv", wait=False).message_ids
    apply = pipeline_module.Pipeline._apply
    failures = {"a": 0}

    def flaky(self: Any, tx: Any, batch: list[Any]) -> Any:
        if len(batch) > 1:
            raise Conflict("another writer got there first")
        if batch[0].message.id == a and failures["a"] == 0:
            failures["a"] += 1
            raise Busy("the store is busy")
        return apply(self, tx, batch)

    monkeypatch.setattr(pipeline_module.Pipeline, "_apply", flaky)
    outcomes = service.pipeline.process_many([a, b, c])
    assert outcomes == {a: Outcome.RETRY, b: Outcome.DEFERRED, c: Outcome.DONE}
    held = service.store.get(b)
    assert held is not None and held.status == WAITING and held.attempts == 0

    assert service.pipeline.process(a) == Outcome.DONE  # the retry
    assert follow(service.pipeline, a, lambda m: None) == 1  # then b, which waited
    versions = history(service, "Patient", rid("Patient", P1))
    assert [v["name"][0]["family"] for v in versions] == ["One", "Two"]
    for m in (a, b):
        message = service.store.get(m)
        assert message is not None and message.status == DONE and len(message.produced) == 2


def test_a_message_that_crashes_its_mapping_fails_alone(
    service: IngestService, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An unexpected error (a bug in an adapter or a mapping) is that message's: the others of
    # its batch are written, and it alone is retried until it is dead.
    hold(service)
    rows = [patient_row(P1), patient_row(P2, LAST="Poison"), patient_row(P3)]
    ids = ingest(service, PATIENTS, patients(*rows), "poison.csv", wait=False).message_ids
    real = pipeline_module.validate

    def crash(resource: dict[str, Any], **options: Any) -> Any:
        if resource.get("name", [{}])[0].get("family") == "Poison":
            raise RuntimeError("a bug in the mapping")
        return real(resource, **options)

    monkeypatch.setattr(pipeline_module, "validate", crash)
    outcomes = service.pipeline.process_many(ids)
    assert outcomes == {ids[0]: Outcome.DONE, ids[1]: Outcome.RETRY, ids[2]: Outcome.DONE}
    assert service.pipeline.process_many(ids) == {
        ids[0]: Outcome.SKIPPED,
        ids[1]: Outcome.DEAD,  # max attempts is 2 here
        ids[2]: Outcome.SKIPPED,
    }
    dead = service.store.get(ids[1])
    assert dead is not None and dead.status == DEAD and "a bug in the mapping" in (dead.error or "")
