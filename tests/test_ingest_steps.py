"""Ingestion in steps: prepare (a plan, nothing written), reconcile, commit; messages that wait
for a resource they refer to; the status table; the mapping version on what a message made.

Runs on SQLite and PostgreSQL, through the service with the inline dispatcher (held where a
test moves the messages itself), over HTTP and the CLI.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import ROOT
from fastapi.testclient import TestClient
from ingest_fixtures import (
    ENCOUNTER_COLUMNS,
    OBSERVATION_COLUMNS,
    PATIENT_COLUMNS,
    csv_bytes,
    encounter_row,
    hold,
    ingest,
    observation_row,
    patient_row,
    read,
    rid,
    wait_for,
)
from ingest_fixtures import (
    statements as counted,
)

import hub.fhir.references as references_module
import hub.ingest.dispatch as dispatch_module
import hub.ingest.pipeline as pipeline_module
from hub.cli import main as cli
from hub.errors import Busy
from hub.ingest import status
from hub.ingest.dispatch import sweep
from hub.ingest.messages import DEAD, DONE, FAILED, PENDING, PROCESSING, RECEIVED, WAITING, now
from hub.ingest.pipeline import Outcome
from hub.ingest.plan import MessagePlan
from hub.ingest.reconcile import reconcile
from hub.ingest.service import IngestService
from hub.ingest.status import Event, IllegalTransition
from hub.interactions import writes
from hub.interactions.context import Context
from hub.interactions.executor import execute
from hub.interactions.plan import Plan, Update
from hub.settings import Settings
from hub.store import SqlRepository, lineage

P1 = "b9c610cd-28a6-4636-ccb6-c7a0d2a4cb85"
P2 = "1d604da9-9a81-4ba9-80c2-de3375d59b40"
P3 = "8d4c4326-e9de-4f45-9a4c-f8c36bff89ae"
P4 = "4a4c4326-e9de-4f45-9a4c-f8c36bff8904"
P5 = "5a4c4326-e9de-4f45-9a4c-f8c36bff8905"
P6 = "6a4c4326-e9de-4f45-9a4c-f8c36bff8906"
PATIENTS = "synthea-patients"
OBSERVATIONS = "synthea-observations"
WAIT_SECONDS = 5.0


@pytest.fixture()
def settings(database_url: str) -> Settings:
    """Few attempts (dead letters come quickly) and a short wait for references."""
    return Settings(
        database_url=database_url,
        public_base_url="http://hub.test/fhir",
        ingest_max_attempts=2,
        ingest_reference_wait_seconds=WAIT_SECONDS,
    )


@pytest.fixture()
def service(ctx: Context, settings: Settings) -> Iterator[IngestService]:
    svc = IngestService(ctx, settings, dispatcher="inline")
    yield svc
    svc.close()


def observation(pid: str, **cells: str) -> bytes:
    """An observation of `pid` outside any encounter: it refers to its Patient only."""
    return csv_bytes(OBSERVATION_COLUMNS, [observation_row(pid, ENCOUNTER="", **cells)])


def patients(*pids: str) -> bytes:
    return csv_bytes(PATIENT_COLUMNS, [patient_row(pid) for pid in pids])


def reason(pid: str) -> str:
    return f"Observation.subject: Patient/{rid('Patient', pid)} has not arrived"


def status_of(service: IngestService, message_id: int) -> str:
    message = service.store.get(message_id)
    assert message is not None
    return message.status


# --- prepare, reconcile -----------------------------------------------------------------


def test_prepare_makes_the_plan_of_a_csv_row_and_writes_nothing(service: IngestService) -> None:
    hold(service)
    (mid,) = ingest(service, OBSERVATIONS, observation(P1), "obs.csv", wait=False).message_ids
    message = service.store.get(mid)
    assert message is not None
    with counted(service) as statements:
        plan = service.pipeline.prepare(message)
        again = service.pipeline.prepare(message)

    assert statements == []  # no database at all, let alone a write
    assert plan == again  # the ids come from the business keys: the same plan every time
    oid = rid("Observation", P1, "2019-02-11T04:28:49Z", "8302-2")
    assert plan.keys() == [("Observation", oid)]
    (write,) = plan.writes
    assert write.resource["subject"] == {"reference": f"Patient/{rid('Patient', P1)}"}
    assert write.resource["valueQuantity"]["value"] == 172.5
    assert "encounter" not in write.resource
    assert ("Observation.valueQuantity.value", "VALUE") in write.lineage
    assert "Observation.subject" in write.awaits  # required: waited for
    assert (plan.mapping, plan.mapping_version) == (OBSERVATIONS, "1")
    assert plan.order_key == message.order_key == P1
    assert status_of(service, mid) == RECEIVED
    assert service.ctx.repo.read("Observation", oid) is None


def test_reconcile_passes_the_plan_through_and_sees_the_current_state(
    service: IngestService, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest(service, PATIENTS, patients(P1), "patients.csv")
    pid = rid("Patient", P1)
    seen: list[tuple[MessagePlan, MessagePlan, Any]] = []

    def spy(plan: MessagePlan, state: Any) -> MessagePlan:
        answer = reconcile(plan, state)
        seen.append((plan, answer, state.current("Patient", pid)))
        return answer

    monkeypatch.setattr(pipeline_module, "reconcile", spy)
    fixed = csv_bytes(PATIENT_COLUMNS, [patient_row(P1, BIRTHDATE="1961-07-05")])
    summary = ingest(service, PATIENTS, fixed, "patients-fix.csv")
    assert summary.done == 1

    ((given, answer, current),) = seen
    assert answer is given  # nothing to reconcile yet: the plan as prepared
    assert given.writes[0].resource["birthDate"] == "1961-07-05"
    # The state is what is stored before this message is written.
    assert current is not None and current["birthDate"] == "1961-07-04"
    assert read(service, "Patient", pid)["birthDate"] == "1961-07-05"


# --- waiting for references -------------------------------------------------------------


def test_a_message_waits_for_its_reference_and_goes_ahead_when_it_arrives(
    service: IngestService,
) -> None:
    summary = ingest(service, OBSERVATIONS, observation(P1), "obs.csv")
    (mid,) = summary.message_ids
    assert (summary.done, summary.pending, summary.open) == (0, 1, 0)
    (error,) = summary.errors
    assert reason(P1) in error
    message = service.store.get(mid)
    assert message is not None
    assert message.status == PENDING and message.error == reason(P1)
    assert message.attempts == 0  # waiting is no failure
    assert message.wait_until is not None
    left = message.wait_until - now()
    assert timedelta(0) < left <= timedelta(seconds=WAIT_SECONDS)
    assert "waitUntil" in message.summary()
    assert service.store.waits_for(mid) == [f"Patient/{rid('Patient', P1)}"]
    oid = rid("Observation", P1, "2019-02-11T04:28:49Z", "8302-2")
    assert service.ctx.repo.read("Observation", oid) is None

    # The Patient arrives in a later message: the one that waited is written too.
    assert ingest(service, PATIENTS, patients(P1), "patients.csv").done == 1
    message = service.store.get(mid)
    assert message is not None
    assert message.status == DONE and message.error is None and message.wait_until is None
    assert message.produced[0] == f"Observation/{oid}/_history/1"
    assert service.store.waits_for(mid) == []
    assert read(service, "Observation", oid)["subject"]["reference"] == (
        f"Patient/{rid('Patient', P1)}"
    )


def test_a_feed_write_walks_its_references_once(
    service: IngestService, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The batch's check, the executor's and the outbound_reference rows share one walk of
    # each Observation; each Provenance is walked when it is stored.
    assert ingest(service, PATIENTS, patients(P1, P2), "patients.csv").done == 2
    walked: list[str] = []
    walk = references_module.references

    def counted_walk(resource: dict[str, Any]) -> Iterator[tuple[str, str]]:
        walked.append(resource["resourceType"])
        return walk(resource)

    monkeypatch.setattr(references_module, "references", counted_walk)
    dated = [
        (P1, "2019-02-11T04:28:49Z"),
        (P2, "2019-02-11T04:28:49Z"),
        (P1, "2020-03-01T10:00:00Z"),
    ]
    rows = [observation_row(pid, ENCOUNTER="", DATE=date) for pid, date in dated]
    summary = ingest(service, OBSERVATIONS, csv_bytes(OBSERVATION_COLUMNS, rows), "obs.csv")
    assert summary.done == 3
    assert sorted(walked) == ["Observation"] * 3 + ["Provenance"] * 3
    for pid in (P1, P2):  # what the walk found is what the store holds against deletion
        r = service.ctx.repo
        with r.transaction() as tx:
            assert tx.referrers([("Patient", rid("Patient", pid))], 10)


def test_a_message_referring_to_one_of_the_same_batch_that_waits_waits_too(
    service: IngestService,
) -> None:
    """The batch's plan counts what its messages write as there; when one of them waits,
    what referred to its resources waits as well (the batch is asked again)."""
    hold(service)
    encounter = "e1000000-0000-0000-0000-000000000009"
    (enc,) = ingest(
        service,
        "synthea-encounters",
        csv_bytes(ENCOUNTER_COLUMNS, [encounter_row(encounter, P2)]),
        "encounters.csv",
        wait=False,
    ).message_ids
    (obs,) = ingest(
        service,
        OBSERVATIONS,
        csv_bytes(OBSERVATION_COLUMNS, [observation_row(P1, ENCOUNTER=encounter)]),
        "obs.csv",
        wait=False,
    ).message_ids
    (pat,) = ingest(service, PATIENTS, patients(P1), "patients.csv", wait=False).message_ids
    # One batch: the Patient P1 and the Encounter are in it, the Encounter's Patient P2 not.
    outcomes = service.pipeline.process_many([enc, obs, pat])
    assert outcomes == {enc: Outcome.PENDING, obs: Outcome.PENDING, pat: Outcome.DONE}
    enc_id = rid("Encounter", encounter)
    assert service.store.get(enc).error == (  # type: ignore[union-attr]
        f"Encounter.subject: Patient/{rid('Patient', P2)} has not arrived"
    )
    assert service.store.get(obs).error == (  # type: ignore[union-attr]
        f"Observation.encounter: Encounter/{enc_id} has not arrived"
    )


def test_a_batch_of_waiting_messages_takes_a_few_statements(service: IngestService) -> None:
    hold(service)
    people = [f"{n:08d}-0000-4000-8000-000000000000" for n in range(30)]
    rows = [observation_row(p, ENCOUNTER="") for p in people]
    ids = ingest(
        service, OBSERVATIONS, csv_bytes(OBSERVATION_COLUMNS, rows), "obs.csv", wait=False
    ).message_ids
    with counted(service) as statements:
        outcomes = service.pipeline.process_many(ids)
    assert outcomes == dict.fromkeys(ids, Outcome.PENDING)
    assert len(statements) <= 20, statements  # not three or more a message
    for i, p in zip(ids, people, strict=True):
        assert service.store.get(i).error == reason(p)  # type: ignore[union-attr]
        assert service.store.waits_for(i) == [f"Patient/{rid('Patient', p)}"]


def test_a_message_waiting_too_long_fails_naming_what_it_waited_for(
    service: IngestService, monkeypatch: pytest.MonkeyPatch
) -> None:
    (mid,) = ingest(service, OBSERVATIONS, observation(P1), "obs.csv").message_ids
    stale = timedelta(seconds=60)
    sweep(service.store, service.dispatcher, stale)
    assert status_of(service, mid) == PENDING  # its wait is not over

    later = now() + timedelta(seconds=WAIT_SECONDS + 1)
    monkeypatch.setattr(dispatch_module, "now", lambda: later)
    sweep(service.store, service.dispatcher, stale)
    message = service.store.get(mid)
    assert message is not None
    assert message.status == FAILED
    assert message.error == f"{reason(P1)} (stopped waiting)"
    assert service.store.waits_for(mid) == []

    # What arrives afterwards no longer sends it; a retry once it is there writes it.
    ingest(service, PATIENTS, patients(P1), "patients.csv")
    assert status_of(service, mid) == FAILED
    assert service.retry([mid]) == [mid]
    assert status_of(service, mid) == DONE


def test_the_sweeper_looks_again_at_a_pending_message(
    service: IngestService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its target written by another path (the REST API, say) releases nothing: the sweeper's
    next look finds it there."""
    (mid,) = ingest(service, OBSERVATIONS, observation(P1), "obs.csv").message_ids
    put_patient(service.ctx, P1)
    assert status_of(service, mid) == PENDING
    later = now() + timedelta(seconds=2)  # stale, not expired
    monkeypatch.setattr(dispatch_module, "now", lambda: later)
    monkeypatch.setattr("hub.store.messages.now", lambda: later)
    sweep(service.store, service.dispatcher, timedelta(seconds=1))
    assert status_of(service, mid) == DONE


def put_patient(ctx: Context, pid: str) -> None:
    resource = {"resourceType": "Patient", "id": rid("Patient", pid), "gender": "female"}
    with ctx.unit(None) as tx:
        execute(ctx, tx, Plan.of(Update("Patient", resource["id"], resource)))


def test_a_pending_message_shows_its_reason_over_http_and_goes_ahead(
    client: TestClient,
) -> None:
    r = client.post(
        "/ingest/csv",
        params={"mapping": OBSERVATIONS, "wait": "true"},
        content=observation(P1),
        headers={"Content-Type": "text/csv"},
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert (body["done"], body["pending"], body["open"]) == (0, 1, 0)
    (mid,) = body["messages"]
    shown = client.get(f"/messages/{mid}").json()
    assert shown["status"] == PENDING and shown["error"] == reason(P1)
    assert "waitUntil" in shown
    listed = client.get("/messages", params={"status": PENDING}).json()["messages"]
    assert [m["id"] for m in listed] == [mid]

    r = client.post(
        "/ingest/csv",
        params={"mapping": PATIENTS, "wait": "true"},
        content=patients(P1),
        headers={"Content-Type": "text/csv"},
    )
    assert r.status_code == 202 and r.json()["done"] == 1, r.text
    # Released when the Patient's batch committed, and sent to the app's dispatcher.
    wait_for(lambda: client.get(f"/messages/{mid}").json()["status"] == DONE, 30, "the observation")
    assert client.get(f"/messages/{mid}").json()["error"] is None


def test_cli_shows_a_pending_message_and_its_reason(
    database_url: str, ctx: Context, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HUB_DATABASE_URL", database_url)
    monkeypatch.setenv("HUB_DB_POOL_SIZE", "2")
    monkeypatch.delenv("HUB_BROKER_URL", raising=False)
    opened: list[SqlRepository] = []
    from_url = SqlRepository.from_url

    def tracked(url: str, pool_size: int = 20, **options: float) -> SqlRepository:
        opened.append(from_url(url, pool_size, **options))
        return opened[-1]

    monkeypatch.setattr(SqlRepository, "from_url", tracked)
    runner = CliRunner()

    def run(*args: str) -> Any:
        try:
            return runner.invoke(cli, list(args))
        finally:
            while opened:
                opened.pop().close()

    file = tmp_path / "obs.csv"
    file.write_bytes(observation(P1))
    result = run("ingest", "--adapter", "csv", "--mapping", OBSERVATIONS, str(file))
    assert result.exit_code == 1, result.output  # a row is still pending
    assert "1 pending" in result.stdout, result.stdout
    assert reason(P1) in result.output

    result = run("messages", "list", "--status", PENDING)
    assert result.exit_code == 0, result.output
    mid = int(result.stdout.split()[0])
    result = run("messages", "show", str(mid))
    assert result.exit_code == 0, result.output
    assert "status: pending" in result.stdout
    assert f"error: {reason(P1)}" in result.stdout
    assert "waitUntil: " in result.stdout


# --- the status table -------------------------------------------------------------------


def test_every_transition_of_the_status_table_is_reached(
    service: IngestService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each (status, event) of `hub.ingest.status.TRANSITIONS`, as a message lives it."""
    hold(service)
    reached: set[tuple[str | None, Event]] = set()
    taken: dict[int, str] = {}  # message -> its status when prepared (after `take`)
    prepare = service.pipeline.prepare

    def watch(message: Any) -> Any:
        taken[message.id] = status_of(service, message.id)
        return prepare(message)

    monkeypatch.setattr(service.pipeline, "prepare", watch)

    def run(ids: list[int]) -> dict[int, Outcome]:
        """Process `ids`, noting `take` from the status each had."""
        before = {i: status_of(service, i) for i in ids}
        outcomes = service.pipeline.process_many(ids)
        for i in ids:
            if i in taken:
                assert taken.pop(i) == PROCESSING
                reached.add((before[i], Event.TAKE))
        return outcomes

    def receive(mapping: str, data: bytes, origin: str) -> list[int]:
        ids = ingest(service, mapping, data, origin, wait=False).message_ids
        assert all(status_of(service, i) == RECEIVED for i in ids)
        reached.add((status.NEW, Event.RECEIVE))
        return ids

    # received -> processing -> done
    (one,) = receive(PATIENTS, patients(P1), "one.csv")
    assert run([one]) == {one: Outcome.DONE}
    reached.add((PROCESSING, Event.WRITE))

    # received -> waiting (an earlier message about its subject is open) -> processing
    rows = [patient_row(P2, LAST="One"), patient_row(P2, LAST="Two")]
    first, second = receive(PATIENTS, csv_bytes(PATIENT_COLUMNS, rows), "two.csv")
    assert run([second]) == {second: Outcome.DEFERRED}
    assert status_of(service, second) == WAITING
    reached.add((RECEIVED, Event.WAIT))
    assert run([first]) == {first: Outcome.DONE}
    assert run([second]) == {second: Outcome.DONE}
    assert (WAITING, Event.TAKE) in reached

    # processing -> waiting (held behind one to retry), and processing -> processing
    rows = [patient_row(P3, LAST="One"), patient_row(P3, LAST="Two")]
    third, fourth = receive(PATIENTS, csv_bytes(PATIENT_COLUMNS, rows), "three.csv")
    real = writes.save
    failures = {"left": 2}  # the batch, then the first message alone

    def failing(*args: Any, **kwargs: Any) -> Any:
        if failures["left"]:
            failures["left"] -= 1
            raise Busy("the store is busy (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr("hub.interactions.executor.save", failing)
    assert run([third, fourth]) == {third: Outcome.RETRY, fourth: Outcome.DEFERRED}
    assert status_of(service, third) == PROCESSING
    assert status_of(service, fourth) == WAITING
    reached.add((PROCESSING, Event.WAIT))
    assert run([third]) == {third: Outcome.DONE}
    assert (PROCESSING, Event.TAKE) in reached

    # processing -> dead (transient errors outlast the attempts: two here)
    (dead,) = receive(PATIENTS, patients(P4), "dead.csv")
    failures["left"] = 4
    assert run([dead]) == {dead: Outcome.RETRY}
    assert run([dead]) == {dead: Outcome.DEAD}
    reached.add((PROCESSING, Event.GIVE_UP))
    assert service.retry([dead]) == [dead] and status_of(service, dead) == RECEIVED
    reached.add((DEAD, Event.RETRY))
    assert run([dead]) == {dead: Outcome.RETRY}
    assert run([dead]) == {dead: Outcome.DEAD}
    assert service.replay([dead]) == [dead] and status_of(service, dead) == RECEIVED
    reached.add((DEAD, Event.REPLAY))
    monkeypatch.setattr("hub.interactions.executor.save", real)
    assert run([dead, fourth]) == {dead: Outcome.DONE, fourth: Outcome.DONE}

    # processing -> failed; failed -> received (retry, replay)
    bad = csv_bytes(PATIENT_COLUMNS, [patient_row(P5, BIRTHDATE="1961-13-01")])
    (failed,) = receive(PATIENTS, bad, "bad.csv")
    assert run([failed]) == {failed: Outcome.FAILED}
    reached.add((PROCESSING, Event.REJECT))
    assert service.retry([failed]) == [failed] and status_of(service, failed) == RECEIVED
    reached.add((FAILED, Event.RETRY))
    assert run([failed]) == {failed: Outcome.FAILED}
    assert service.replay([failed]) == [failed] and status_of(service, failed) == RECEIVED
    reached.add((FAILED, Event.REPLAY))
    assert run([failed]) == {failed: Outcome.FAILED}

    # done -> received (replay)
    assert service.replay([one]) == [one] and status_of(service, one) == RECEIVED
    reached.add((DONE, Event.REPLAY))
    assert run([one]) == {one: Outcome.DONE}

    # processing -> pending; pending -> received (its target arrived)
    (obs,) = receive(OBSERVATIONS, observation(P6), "obs.csv")
    assert run([obs]) == {obs: Outcome.PENDING}
    assert status_of(service, obs) == PENDING
    reached.add((PROCESSING, Event.AWAIT_REFERENCE))
    (six,) = receive(PATIENTS, patients(P6), "six.csv")
    outcomes = service.pipeline.process_many([six])
    taken.pop(six)
    assert outcomes == {six: Outcome.DONE} and outcomes.released == [obs]
    assert status_of(service, obs) == RECEIVED
    reached.add((PENDING, Event.ARRIVED))
    assert run([obs]) == {obs: Outcome.DONE}

    # pending -> processing (looked at again), pending -> failed (the wait is over)
    late = "7a4c4326-e9de-4f45-9a4c-f8c36bff8907"
    gone = "8a4c4326-e9de-4f45-9a4c-f8c36bff8908"
    looked, expired = receive(
        OBSERVATIONS,
        csv_bytes(OBSERVATION_COLUMNS, [observation_row(p, ENCOUNTER="") for p in (late, gone)]),
        "late.csv",
    )
    assert run([looked, expired]) == {looked: Outcome.PENDING, expired: Outcome.PENDING}
    put_patient(service.ctx, late)  # not through the feed: nothing releases the message
    assert run([looked]) == {looked: Outcome.DONE}
    assert (PENDING, Event.TAKE) in reached
    assert service.store.expire(now() + timedelta(seconds=WAIT_SECONDS + 1)) == [expired]
    assert status_of(service, expired) == FAILED
    reached.add((PENDING, Event.EXPIRE))

    # (new) -> failed: an HL7 v2 message refused at receipt (answered AR) is kept, failed.
    refused = service.ingest(
        "hl7v2",
        None,
        io.BytesIO(b"MSH|^~\\&|A|B|||20240101||ZZZ^Z01|R1|P|2.5\rPID|1\r"),
        "refused.hl7",
    ).message_ids
    assert [status_of(service, m) for m in refused] == [FAILED]
    reached.add((status.NEW, Event.REFUSE))
    assert reached == set(status.TRANSITIONS)
    for (source, event_), target in status.TRANSITIONS.items():
        assert status.move(source, event_) == target


def test_an_illegal_transition_is_refused(service: IngestService) -> None:
    with pytest.raises(IllegalTransition, match="a done message cannot take"):
        status.move(DONE, Event.TAKE)
    with pytest.raises(IllegalTransition):
        status.move(status.NEW, Event.WRITE)
    with pytest.raises(IllegalTransition):
        status.move(PENDING, Event.WRITE)  # written only once it is taken again
    with pytest.raises(IllegalTransition):
        status.sources(Event.ARRIVED, among=(FAILED,))
    # The store moves only what the table allows: retrying a done message changes nothing.
    (mid,) = ingest(service, PATIENTS, patients(P1), "one.csv").message_ids
    assert service.retry([mid]) == []
    assert status_of(service, mid) == DONE
    assert status.sources(Event.TAKE) == (RECEIVED, WAITING, PENDING, PROCESSING)


# --- the mapping's version ----------------------------------------------------------------


def test_the_mapping_and_its_version_are_on_the_message_its_provenance_and_lineage(
    ctx: Context, settings: Settings, tmp_path: Path
) -> None:
    text = (ROOT / "mappings" / "csv" / f"{PATIENTS}.yaml").read_text(encoding="utf-8")
    assert "\nversion: 1\n" in text
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / f"{PATIENTS}.yaml").write_text(
        text.replace("\nversion: 1\n", "\nversion: 2026.12b\n"), encoding="utf-8"
    )
    service = IngestService(
        ctx, settings.model_copy(update={"mappings_dir": tmp_path}), dispatcher="inline"
    )
    try:
        summary = service.ingest("csv", PATIENTS, io.BytesIO(patients(P1)), "p.csv", wait=True)
        (mid,) = summary.message_ids
        message = service.store.get(mid)
        assert message is not None and message.status == DONE
        assert message.mapping_version == "2026.12b"
        assert message.summary()["mapping"] == PATIENTS
        assert message.summary()["mappingVersion"] == "2026.12b"
        provenance = read(service, "Provenance", f"message-{mid}")
        assert provenance["policy"] == [f"urn:fhir-hub:mapping:{PATIENTS}|2026.12b"]
        pid = rid("Patient", P1)
        lines = service.store.lineage_of("Patient", pid)
        assert lines and {(e["mapping"], e["mappingVersion"]) for e in lines} == {
            (PATIENTS, "2026.12b")
        }
        assert {(e["mapping"], e["mappingVersion"]) for e in service.store.lineage_for_message(mid)}
        with ctx.reading(None) as tx:
            assert {
                (e["mapping"], e["mappingVersion"]) for e in lineage.elements(tx, "Patient", pid)
            } == {(PATIENTS, "2026.12b")}
    finally:
        service.close()
