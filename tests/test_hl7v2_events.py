"""HL7 v2 event semantics through the pipeline, on SQLite and PostgreSQL: merges (A40,
A34, A47) retire a Patient and move what referenced it; cancel admit, discharge and
transfer (A11, A13, A12) undo what the event did. Searched through the FHIR API."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from hub.ingest.mapping import resource_id
from hub.ingest.reconcile import reconcile
from hub.ingest.service import IngestService, Summary
from hub.interactions.context import Context
from hub.settings import Settings

SOURCE = "ADT1/HOSP"
X, Y = "X1001", "Y2002"


@pytest.fixture()
def service(ctx: Context, settings: Settings) -> Iterator[IngestService]:
    svc = IngestService(ctx, settings, dispatcher="inline")
    yield svc
    svc.close()


def message(*segments: str, control: str, kind: str) -> bytes:
    msh = f"MSH|^~\\&|ADT1|HOSP|HUB|HUB|20240301120000+0100||{kind}|{control}|P|2.5.1"
    return "\r".join([msh, *segments]).encode() + b"\r"


def pid(mrn: str, family: str = "Merged") -> str:
    return f"PID|1||{mrn}^^^HOSP^MR||{family}^Pat||19800101|F"


def pv1(visit: str, location: str = "WARD^101^1", discharged: str = "") -> str:
    fields = ["PV1", "1", "I", location] + [""] * 15 + [visit] + [""] * 24
    fields += ["20240301100000", discharged]
    return "|".join(fields)


def admit(mrn: str = X, visit: str = "V1") -> bytes:
    return message(pid(mrn), pv1(visit), control=f"A01-{mrn}", kind="ADT^A01^ADT_A01")


def result(mrn: str = X) -> bytes:
    return message(
        pid(mrn),
        pv1("V1"),
        "ORC|RE|ORD1|LAB1",
        "OBR|1|ORD1|LAB1|2345-7^Glucose^LN|||20240301110000",
        "OBX|1|NM|2345-7^Glucose^LN||5.4|mmol/L^mmol/L^UCUM|||||F",
        control=f"ORU-{mrn}",
        kind="ORU^R01^ORU_R01",
    )


def merge(kind: str = "ADT^A40^ADT_A39", control: str = "A40-1") -> bytes:
    return message(
        "EVN|A40|20240301120000",
        pid(Y, "Survivor"),
        f"MRG|{X}^^^HOSP^MR",
        control=control,
        kind=kind,
    )


def ingest(service: IngestService, raw: bytes) -> Summary:
    summary = service.ingest("hl7v2", None, io.BytesIO(raw), "test")
    assert summary.errors == [], summary.errors
    return summary


def search(client: TestClient, query: str) -> list[dict[str, Any]]:
    r = client.get(f"/fhir/{query}")
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", [])]


def rid(resource_type: str, *key: str) -> str:
    return resource_id(SOURCE, resource_type, list(key))


def versions(client: TestClient, resource_type: str, resource_id: str) -> list[dict[str, Any]]:
    r = client.get(f"/fhir/{resource_type}/{resource_id}/_history")
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json()["entry"]]


def test_a40_retires_the_patient_and_moves_its_references(
    service: IngestService, client: TestClient
) -> None:
    ingest(service, admit())
    ingest(service, result())
    ingest(service, admit(Y, "V9"))
    x, y = rid("Patient", X), rid("Patient", Y)
    [observation] = search(client, f"Observation?patient={x}")
    assert observation["subject"]["reference"] == f"Patient/{x}"

    summary = ingest(service, merge())
    assert summary.done == 1

    assert search(client, f"Observation?patient={x}") == []
    [moved] = search(client, f"Observation?patient={y}")
    assert moved["id"] == observation["id"] and moved["meta"]["versionId"] == "2"
    encounters = {e["id"] for e in search(client, f"Encounter?patient={y}")}
    assert rid("Encounter", X, "V1") in encounters and rid("Encounter", Y, "V9") in encounters
    assert search(client, f"Encounter?patient={x}") == []
    [report] = search(client, f"DiagnosticReport?patient={y}")
    assert report["subject"]["reference"] == f"Patient/{y}"

    retired = client.get(f"/fhir/Patient/{x}").json()
    assert retired["active"] is False
    assert retired["link"] == [{"other": {"reference": f"Patient/{y}"}, "type": "replaced-by"}]
    assert retired["name"][0]["family"] == "Merged"  # kept: the merge retires, not rewrites
    survivor = client.get(f"/fhir/Patient/{y}").json()
    assert survivor["link"] == [{"other": {"reference": f"Patient/{x}"}, "type": "replaces"}]
    assert survivor["name"][0]["family"] == "Survivor"

    # History keeps the earlier version: nothing is lost.
    history = versions(client, "Observation", observation["id"])
    assert [v["subject"]["reference"] for v in history] == [f"Patient/{y}", f"Patient/{x}"]

    # Lineage says what moved the reference.
    shown = client.get(f"/messages/{summary.message_ids[0]}").json()
    rows = {(row["element"], row["source"]) for row in shown["lineage"]}
    assert ("Observation.subject", "MRG-1.1") in rows
    assert ("Patient.link[0].other", "MRG-1.1") in rows  # the survivor's
    assert ("Patient.link[0].other", "PID-3.1") in rows  # the retired one's

    # Resent (the same bytes, then under a new control id): nothing changes.
    before = {
        (t, i): client.get(f"/fhir/{t}/{i}").json()["meta"]["versionId"]
        for t, i in [("Patient", x), ("Patient", y), ("Observation", observation["id"])]
    }
    ingest(service, merge())
    assert ingest(service, merge(control="A40-2")).done == 1
    after = {
        (t, i): client.get(f"/fhir/{t}/{i}").json()["meta"]["versionId"]
        for t, i in [("Patient", x), ("Patient", y), ("Observation", observation["id"])]
    }
    assert after == before

    # A later update of the survivor keeps its link; of the retired one, `active` false.
    ingest(service, message(pid(Y, "Survivor-Smith"), control="A08-Y", kind="ADT^A08^ADT_A01"))
    survivor = client.get(f"/fhir/Patient/{y}").json()
    assert survivor["name"][0]["family"] == "Survivor-Smith"
    assert survivor["link"][0]["type"] == "replaces"


def test_a_message_about_a_merged_patient_after_the_merge_goes_to_the_survivor(
    service: IngestService, client: TestClient
) -> None:
    ingest(service, admit())
    ingest(service, admit(Y, "V9"))
    assert ingest(service, merge()).done == 1
    x, y = rid("Patient", X), rid("Patient", Y)

    # The sender still uses the retired MRN: a visit and a result arrive after the merge.
    assert ingest(service, admit(X, "V2")).done == 1
    assert ingest(service, result(X)).done == 1
    late = client.get(f"/fhir/Encounter/{rid('Encounter', X, 'V2')}").json()
    assert late["subject"]["reference"] == f"Patient/{y}"
    [observation] = search(client, f"Observation?patient={y}")
    assert search(client, f"Observation?patient={x}") == []
    assert search(client, f"Encounter?patient={x}") == []
    assert {e["id"] for e in search(client, f"Encounter?patient={y}")} >= {late["id"]}
    # The retired Patient stays retired: the message's demographics go on its record.
    retired = client.get(f"/fhir/Patient/{x}").json()
    assert retired["active"] is False
    assert retired["link"] == [{"other": {"reference": f"Patient/{y}"}, "type": "replaced-by"}]
    assert observation["subject"]["reference"] == f"Patient/{y}"


def test_redirects_follow_a_chain_of_merges(service: IngestService, client: TestClient) -> None:
    z = "Z3003"
    ingest(service, admit())
    ingest(service, admit(Y, "V9"))
    ingest(service, admit(z, "V7"))
    assert ingest(service, merge()).done == 1  # X into Y
    into_z = message(pid(z, "Last"), f"MRG|{Y}^^^HOSP^MR", control="A40-Z", kind="ADT^A40^ADT_A39")
    assert ingest(service, into_z).done == 1  # then Y into Z
    assert ingest(service, admit(X, "V3")).done == 1
    late = client.get(f"/fhir/Encounter/{rid('Encounter', X, 'V3')}").json()
    assert late["subject"]["reference"] == f"Patient/{rid('Patient', z)}"


@pytest.mark.parametrize("kind", ["ADT^A34^ADT_A30", "ADT^A47^ADT_A30"])
def test_a34_and_a47_retire_the_patient_under_the_old_identifier(
    service: IngestService, client: TestClient, kind: str
) -> None:
    ingest(service, admit())
    assert ingest(service, merge(kind)).done == 1
    x, y = rid("Patient", X), rid("Patient", Y)
    assert [e["id"] for e in search(client, f"Encounter?patient={y}")] == [
        rid("Encounter", X, "V1")
    ]
    retired = client.get(f"/fhir/Patient/{x}").json()
    assert retired["active"] is False and retired["link"][0]["type"] == "replaced-by"


def test_a_merge_in_one_batch_with_what_it_moves(
    service: IngestService, client: TestClient
) -> None:
    # One file: the admit, the result and the merge are processed together; the merge
    # still moves what the two before it wrote.
    raw = admit() + result() + merge()
    summary = service.ingest("hl7v2", None, io.BytesIO(raw), "batch.hl7")
    assert summary.errors == [] and summary.done == 3
    y = rid("Patient", Y)
    assert len(search(client, f"Observation?patient={y}")) == 1
    assert len(search(client, f"Encounter?patient={y}")) == 1
    assert search(client, f"Observation?patient={rid('Patient', X)}") == []


def test_a_merge_of_a_patient_into_itself_fails(service: IngestService) -> None:
    raw = message(pid(X), f"MRG|{X}^^^HOSP^MR", control="A40-self", kind="ADT^A40^ADT_A39")
    summary = service.ingest("hl7v2", None, io.BytesIO(raw), "test")
    assert summary.rejected == 1
    assert "merged into itself" in summary.errors[0]


def visit(kind: str, control: str, **pv1_args: str) -> bytes:
    return message(pid(X), pv1("V1", **pv1_args), control=control, kind=kind)


def encounter(client: TestClient) -> dict[str, Any]:
    r = client.get(f"/fhir/Encounter/{rid('Encounter', X, 'V1')}")
    assert r.status_code == 200, r.text
    return r.json()


def test_a11_cancels_the_admit_and_keeps_what_it_made(
    service: IngestService, client: TestClient
) -> None:
    ingest(service, admit())
    ingest(service, result())
    ingest(service, visit("ADT^A11^ADT_A09", "A11-1", discharged="20240302090000"))
    cancelled = encounter(client)
    assert cancelled["status"] == "cancelled"  # the IG's Event[EncounterStatus]
    assert "end" not in cancelled["period"]
    assert [e["status"] for e in search(client, "Encounter?status=cancelled")] == ["cancelled"]
    # Nothing is deleted: the result of the cancelled visit is still there.
    assert len(search(client, f"Observation?patient={rid('Patient', X)}")) == 1


def test_a13_cancels_the_discharge(service: IngestService, client: TestClient) -> None:
    ingest(service, admit())
    ingest(service, visit("ADT^A03^ADT_A03", "A03-1", discharged="20240302090000"))
    discharged = encounter(client)
    assert discharged["status"] == "finished"
    assert discharged["period"]["end"] == "2024-03-02T09:00:00Z"
    # Some senders repeat the discharge time in the cancel: the visit goes on all the same.
    ingest(service, visit("ADT^A13^ADT_A01", "A13-1", discharged="20240302090000"))
    reopened = encounter(client)
    assert reopened["status"] == "in-progress"
    assert reopened["period"] == {"start": "2024-03-01T10:00:00Z"}
    assert reopened["meta"]["versionId"] == "3"
    history = versions(client, "Encounter", reopened["id"])
    assert [v["status"] for v in history] == ["in-progress", "finished", "in-progress"]


def test_a12_cancels_the_transfer(service: IngestService, client: TestClient) -> None:
    ingest(service, admit())
    before = encounter(client)["location"]
    assert len(before) == 1 and before[0]["status"] == "active"

    def transfer(kind: str, control: str, to: str, prior: str) -> bytes:
        segment = pv1("V1", location=to).split("|")
        segment[6] = prior  # PV1-6, the prior location
        return message(pid(X), "|".join(segment), control=control, kind=kind)

    ingest(service, transfer("ADT^A02^ADT_A02", "A02-1", "WARD^202^1", "WARD^101^1"))
    moved = encounter(client)["location"]
    assert moved[0]["location"] != before[0]["location"]
    assert moved[1] == {**before[0], "status": "completed"}
    # A12: PV1-3 is where the patient is again, PV1-6 the cancelled location.
    ingest(service, transfer("ADT^A12^ADT_A12", "A12-1", "WARD^101^1", "WARD^202^1"))
    back = encounter(client)
    assert back["location"] == before
    assert back["status"] == "in-progress"


def test_reconcile_leaves_a_plan_with_nothing_stored_to_keep_as_it_is(
    service: IngestService,
) -> None:
    class Nothing:
        def current(self, resource_type: str, resource_id: str) -> None:
            return None

        def version(self, resource_type: str, resource_id: str) -> None:
            return None

        def referrers(self, resource_type: str, resource_id: str) -> list[tuple[str, str]]:
            return []

    [message_id] = ingest(service, admit()).message_ids
    stored = service.store.get(message_id)
    assert stored is not None
    plan = service.pipeline.prepare(stored)
    assert any(w.keep for w in plan.writes)  # the Patient keeps link and active
    assert reconcile(plan, Nothing()) is plan
