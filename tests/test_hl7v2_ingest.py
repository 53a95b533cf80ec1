"""HL7 v2 end to end, on SQLite and PostgreSQL: the IG's messages stored as the receiver
stores them (adapter hl7v2, no mapping, source `<MSH-3>/<MSH-4>`), processed inline, then
found through the FHIR API; resends update, lineage and Provenance name the v2 places."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from adapters.hl7v2.adapter import external_id
from hub.errors import Invalid
from hub.ingest.adapters import Unit
from hub.ingest.mapping import resource_id
from hub.ingest.messages import DONE, FAILED
from hub.ingest.service import IngestService, Summary
from hub.interactions.context import Context
from hub.settings import Settings

DATA = Path(__file__).parent / "data" / "hl7v2"
SAMPLES = ["ADT_A01", "ORU_R01", "VXU_V04", "ORM_O01", "OML_O21", "SIU_S12", "MDM_T02"]


@pytest.fixture()
def service(ctx: Context, settings: Settings) -> Iterator[IngestService]:
    svc = IngestService(ctx, settings, dispatcher="inline")
    yield svc
    svc.close()


def receive(service: IngestService, *raws: bytes) -> Summary:
    """What the receiver does with each message: commit it raw (mapping None, the sender as
    source, the patient as order key), then have it processed; wait for the outcome."""
    adapter = service.adapters.get("hl7v2")
    ids = []
    for number, raw in enumerate(raws, start=1):
        source = adapter.source_of(raw)  # type: ignore[attr-defined]
        [received] = service.store.receive(
            [Unit(raw=raw, external_id=external_id(raw), origin=f"test message {number}")],
            source=source,
            adapter="hl7v2",
            mapping=None,
            order_keys=[service.pipeline.order_key("hl7v2", None, raw, source)],
        )
        assert received.id is not None
        ids.append(received.id)
    service.dispatcher.submit(ids)
    return service.wait(ids)


def sample(name: str) -> bytes:
    return (DATA / f"ig-{name}.hl7").read_bytes()


def search(client: TestClient, query: str) -> list[dict]:  # type: ignore[type-arg]
    r = client.get(f"/fhir/{query}")
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", [])]


def test_the_ig_messages_are_written_and_searchable(
    service: IngestService, client: TestClient
) -> None:
    summary = receive(service, *(sample(name) for name in SAMPLES))
    assert summary.errors == []
    assert (summary.done, summary.rejected) == (7, 0)

    [eve] = search(client, "Patient?identifier=urn:oid:1.2.3.4.5|1032702")
    assert eve["id"] == resource_id("SndApp/SndFac", "Patient", ["1032702"])
    assert eve["name"][0]["family"] == "Everywoman"
    assert eve["birthDate"] == "1970-06-01"
    # Two senders of Eve's messages, SndApp/SndFac (ADT, VXU, ORM, OML, SIU) and
    # LabApp/LabFac (ORU): each has its own Patient (no matching across sources yet).
    everyone = search(client, "Patient?family=Everywoman")
    assert len(everyone) == 2
    lab_eve = resource_id("LabApp/LabFac", "Patient", ["1032702"])
    results = search(client, f"Observation?patient={lab_eve}&_sort=code")
    assert [o["code"]["coding"][0]["code"] for o in results] == ["6041-8", "6153-1", "6265-3"]
    assert (
        search(client, f"Observation?patient={lab_eve}&code=http://loinc.org|6153-1")[0][
            "valueQuantity"
        ]["value"]
        == 3.9
    )
    [report] = search(client, f"DiagnosticReport?patient={lab_eve}")
    assert len(report["result"]) == 3
    assert len(search(client, f"Immunization?patient={eve['id']}")) == 3
    [appointment] = search(client, "Appointment?status=booked")
    assert appointment["start"] == "2015-06-13T14:00:00Z"
    [document] = search(client, "DocumentReference?type=PN")
    assert document["docStatus"] == "final"
    assert search(client, "Encounter?identifier=81456267")
    assert search(client, "ServiceRequest?identifier=ORD777888")
    assert search(client, "Specimen?identifier=SPM1234")


def test_a_resend_updates_and_a_discharge_finishes_the_encounter(
    service: IngestService, client: TestClient
) -> None:
    admit = sample("ADT_A01")
    first = receive(service, admit)
    assert first.done == 1
    again = receive(service, admit)  # the same bytes: a duplicate, nothing new
    assert again.done == 1 and service.store.counts(again.message_ids) == {DONE: 1}
    discharge = (
        admit.replace(b"ADT^A01^ADT_A01|4637382", b"ADT^A03^ADT_A03|4637399")
        .replace(b"|20150601135800|||", b"|20150601135800|20150603101500+0200||")
        .replace(b"Everywoman^Eve", b"Everywoman^Evelyn")
    )
    assert receive(service, discharge).done == 1
    encounter_id = resource_id("SndApp/SndFac", "Encounter", ["1032702", "81456267"])
    r = client.get(f"/fhir/Encounter/{encounter_id}")
    assert r.status_code == 200
    assert r.json()["status"] == "finished"
    assert r.json()["period"]["end"] == "2015-06-03T10:15:00+02:00"
    assert r.json()["meta"]["versionId"] == "2"  # updated, not duplicated
    [patient] = search(client, "Patient?identifier=1032702")
    assert patient["name"][0]["given"][0] == "Evelyn"
    assert len(search(client, "Encounter?identifier=81456267")) == 1


def test_lineage_and_provenance_name_the_v2_places(
    service: IngestService, client: TestClient
) -> None:
    summary = receive(service, sample("ADT_A01"))
    [message_id] = summary.message_ids
    shown = client.get(f"/messages/{message_id}").json()
    assert shown["status"] == DONE and shown["source"] == "SndApp/SndFac"
    assert shown["mappingVersion"] == "1"
    patient_id = resource_id("SndApp/SndFac", "Patient", ["1032702"])
    rows = {(row["element"], row["source"]) for row in shown["lineage"]}
    assert ("Patient.name[0].family", "PID-5.1") in rows
    assert ("Patient.name[1].family", "PID-5[2].1") in rows
    assert ("Patient (not mapped)", "IN3") in rows
    assert {row["mapping"] for row in shown["lineage"]} == {"hl7v2-adt"}
    r = client.get(f"/fhir/Patient/{patient_id}/$lineage")
    assert r.status_code == 200
    provenance = client.get(f"/fhir/Provenance/message-{message_id}").json()
    assert provenance["policy"] == ["urn:fhir-hub:mapping:hl7v2-adt|1"]
    assert provenance["agent"][0]["who"]["display"] == "SndApp/SndFac"


def test_an_unknown_type_and_a_bad_message_are_kept_and_failed(
    service: IngestService,
) -> None:
    unknown = sample("ADT_A01").replace(b"ADT^A01^ADT_A01|4637382", b"ZZZ^Z01|1")
    bad_date = (
        sample("ADT_A01")
        .replace(b"|197006010912|", b"|19701301|")
        .replace(b"|4637382|", b"|4637383|")
    )
    summary = receive(service, unknown, bad_date)
    assert service.store.counts(summary.message_ids) == {FAILED: 2}
    errors = sorted(summary.errors)
    assert "field MSH-9: no mapping for message type ZZZ^Z01" in errors[0] + errors[1]
    assert any("field PID-7: '19701301'" in e for e in errors)


def test_messages_about_one_patient_keep_their_order_key(service: IngestService) -> None:
    raw = sample("ORU_R01")
    assert service.pipeline.order_key("hl7v2", None, raw, "LabApp/LabFac") == "1032702"
    assert service.pipeline.order_key("hl7v2", None, b"not hl7", "x") is None


def test_ingest_takes_a_file_of_messages(service: IngestService) -> None:
    """`IngestService.ingest` with the hl7v2 adapter and no mapping (its framing is the
    receiving side's: this runs once that is in place)."""
    pytest.importorskip("adapters.hl7v2.framing")
    data = b"\r\n".join(sample(name).rstrip(b"\r") for name in SAMPLES) + b"\r\n"
    summary = service.ingest("hl7v2", None, io.BytesIO(data), "samples.hl7")
    assert (summary.units, summary.done, summary.rejected) == (7, 7, 0)
    assert {m.source for m in service.store.get_many(summary.message_ids)} == {
        "SndApp/SndFac",
        "LabApp/LabFac",
        "HIE/REDDING HOSPITAL",
    }


def test_financial_and_pharmacy_messages_are_searchable(
    service: IngestService, client: TestClient
) -> None:
    dft = (DATA / "written-DFT_P03.hl7").read_bytes()
    omp = (DATA / "written-OMP_O09.hl7").read_bytes()
    summary = receive(service, dft, omp)
    assert summary.errors == [] and summary.done == 2
    billing = resource_id("BILL/NORTH", "Patient", ["MRN-9"])
    charges = search(client, f"ChargeItem?patient={billing}")
    assert sorted(c["status"] for c in charges) == ["billable", "not-billable"]
    assert search(client, "ChargeItem?code=http://www.ama-assn.org/go/cpt|80053")
    [account] = search(client, f"Account?patient={billing}")
    assert len(account["guarantor"]) == 2
    [coverage] = search(client, f"Coverage?beneficiary={billing}")
    assert coverage["payor"] == [{"display": "Zilveren Kruis"}]
    assert search(client, f"RelatedPerson?patient={billing}")[0]["name"][0]["given"] == ["Maria"]
    pharmacy = resource_id("PHARM/NORTH", "Patient", ["MRN-9"])
    [order] = search(client, f"MedicationRequest?patient={pharmacy}&intent=original-order")
    assert order["medicationCodeableConcept"]["coding"][0]["code"] == "197361"


def test_repeated_resources_are_validated_once_and_bad_ones_always_refused(
    ctx: Context, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hub.ingest import pipeline as pipeline_module

    service = IngestService(ctx, settings, dispatcher="inline")
    try:
        seen: list[str] = []
        real = pipeline_module.validate

        def counting(resource: dict[str, Any], *args: Any, **kw: Any) -> str:
            seen.append(resource["resourceType"])
            return real(resource, *args, **kw)

        monkeypatch.setattr(pipeline_module, "validate", counting)
        practitioner = {"resourceType": "Practitioner", "id": "p1", "name": [{"family": "Lee"}]}
        service.pipeline._validate(dict(practitioner))
        service.pipeline._validate(dict(practitioner))
        assert seen == ["Practitioner"]  # the same content: validated once
        bad = {"resourceType": "Practitioner", "id": "p2", "gender": "sometimes"}
        for _ in range(2):  # an invalid one is never remembered
            with pytest.raises(Invalid):
                service.pipeline._validate(dict(bad))
        assert seen == ["Practitioner"] * 3
    finally:
        service.close()
