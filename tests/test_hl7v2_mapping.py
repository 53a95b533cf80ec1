"""HL7 v2 mappings: the IG's seven sample messages, the IG's expected ADT_A01 bundle,
public real-world messages, lineage, ids, message map choice and per-source changes.

Each golden test maps a message with the repository's maps (`mappings/hl7v2/`) and
asserts what can be read off the message; every resource is validated as FHIR R4.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.hl7v2 import Hl7v2Adapter
from hub.errors import Invalid
from hub.fhir import validate
from hub.ingest.mapping import Mapped, MappingError, resource_id
from hub.ingest.mapping_v2 import Catalogue, datetime_of

DATA = Path(__file__).parent / "data" / "hl7v2"
MAPPINGS = Path(__file__).resolve().parent.parent / "mappings" / "hl7v2"
LOINC = "http://loinc.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


@dataclass
class Result:
    mapped: Mapped
    source: str
    mapping: str

    def all(self, resource_type: str) -> list[dict[str, Any]]:
        return [r for r in self.mapped.resources if r["resourceType"] == resource_type]

    def one(self, resource_type: str) -> dict[str, Any]:
        found = self.all(resource_type)
        assert len(found) == 1, f"{len(found)} {resource_type}"
        return found[0]

    def get(self, reference: dict[str, str]) -> dict[str, Any]:
        kind, _, rid = reference["reference"].partition("/")
        [found] = [r for r in self.all(kind) if r["id"] == rid]
        return found

    def lineage(self, resource: dict[str, Any]) -> dict[str, str]:
        index = self.mapped.resources.index(resource)
        return dict(self.mapped.lineage[index])

    def ref(self, resource: dict[str, Any]) -> dict[str, str]:
        return {"reference": f"{resource['resourceType']}/{resource['id']}"}


@pytest.fixture(scope="module")
def adapter() -> Hl7v2Adapter:
    return Hl7v2Adapter(MAPPINGS)


def run(adapter: Hl7v2Adapter, raw: bytes) -> Result:
    tree = adapter.parse(raw)
    mapper = adapter.mapper_for(tree)
    mapped = adapter.map(tree, mapper)
    for resource in mapped.resources:
        validate(resource)
    keys = [(r["resourceType"], r["id"]) for r in mapped.resources]
    assert len(keys) == len(set(keys)), "a resource written twice by one message"
    return Result(mapped, mapper.source, mapper.mapping.name)


@pytest.fixture(scope="module")
def sample(adapter: Hl7v2Adapter) -> Callable[[str], Result]:
    cache: dict[str, Result] = {}

    def load(name: str) -> Result:
        if name not in cache:
            cache[name] = run(adapter, (DATA / f"ig-{name}.hl7").read_bytes())
        return cache[name]

    return load


def identifiers(resource: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {i["value"]: i for i in resource.get("identifier", [])}


def codes(concept: dict[str, Any]) -> list[tuple[str | None, str]]:
    return [(c.get("system"), c["code"]) for c in concept.get("coding", []) if "code" in c]


# ---- ADT_A01 ---------------------------------------------------------------------------


def test_adt_a01_patient(sample: Callable[[str], Result]) -> None:
    adt = sample("ADT_A01")
    assert adt.mapping == "hl7v2-adt" and adt.source == "SndApp/SndFac"
    assert adt.mapped.order_key == "1032702"
    patient = adt.one("Patient")
    assert patient["id"] == resource_id("SndApp/SndFac", "Patient", ["1032702"])
    ids = identifiers(patient)
    # Every PID-3 repetition is an identifier; the authority's ISO OID is the system.
    assert ids["1032702"]["system"] == "urn:oid:1.2.3.4.5"
    assert ids["1032702"]["type"]["coding"][0] == {"system": V2_0203, "code": "MR"}
    assert ids["1032702"]["period"] == {"start": "2019-01-01", "end": "2029-01-01"}
    assert ids["1032702"]["assigner"] == {"display": "V2FHIR"}
    assert ids["N09204074"]["system"] == "urn:oid:1.3.4.7"
    assert ids["N09204074"]["type"]["coding"][0]["code"] == "DL"
    assert ids["000-00-0000"]["system"] == "http://hl7.org/fhir/sid/us-ssn"
    official, maiden = patient["name"]
    assert official == {
        "family": "Everywoman",
        "given": ["Eve", "L"],
        "suffix": ["Jr", "PhD"],
        "prefix": ["Dr"],
        "use": "official",
        "period": {"start": "2000-09-09", "end": "2030-12-31"},
    }
    assert maiden["family"] == "Original" and maiden["use"] == "maiden"
    assert maiden["period"] == {"start": "1970-06-01", "end": "2000-09-08"}
    assert patient["gender"] == "female"
    assert patient["birthDate"] == "1970-06-01"
    birth_time = [e for e in patient["extension"] if e["url"].endswith("patient-birthTime")]
    assert birth_time == [
        {
            "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
            "valueDateTime": "1970-06-01T09:12:00Z",
        }
    ]
    home, vacation = patient["address"]
    assert home["line"] == ["1000 House Lane", "Appt 123"] and home["use"] == "home"
    assert (home["city"], home["state"], home["postalCode"], home["country"]) == (
        "Ann Arbor",
        "MI",
        "99999",
        "USA",
    )
    assert vacation["city"] == "Miami" and vacation["period"] == {
        "start": "2021-09-01",
        "end": "2021-11-15",
    }
    telecom = {(t.get("system"), t.get("use"), t["value"]) for t in patient["telecom"]}
    assert ("phone", "home", "+1 (555) 555-8473") in telecom
    assert ("email", None, "eve@test.test") in telecom
    assert ("phone", "work", "+1 (555) 555-1126 ext. 12") in telecom
    assert codes(patient["maritalStatus"]) == [
        ("http://terminology.hl7.org/CodeSystem/v2-0002", "M")
    ]
    assert codes(patient["communication"][0]["language"]) == [
        ("http://terminology.hl7.org/CodeSystem/v2-0296", "en")
    ]
    assert patient["multipleBirthInteger"] == 2
    assert patient["deceasedBoolean"] is False
    # Every NK1 is a contact (and a RelatedPerson of its own).
    assert patient["contact"][0]["name"]["family"] == "Everyone"
    related = adt.one("RelatedPerson")
    assert related["patient"] == adt.ref(patient) and related["name"][0]["family"] == "Everyone"
    # PD1-3 and PD1-4: the general practitioner, an Organization and a Practitioner.
    gps = [adt.get(ref) for ref in patient["generalPractitioner"]]
    assert {g["resourceType"] for g in gps} == {"Practitioner", "Organization"}
    doctor = next(g for g in gps if g["resourceType"] == "Practitioner")
    assert doctor["name"][0]["family"] == "Smith" and doctor["identifier"][0]["value"] == "23432"


def test_adt_a01_encounter_and_what_the_message_carries(sample: Callable[[str], Result]) -> None:
    adt = sample("ADT_A01")
    patient = adt.one("Patient")
    encounter = adt.one("Encounter")
    assert encounter["id"] == resource_id("SndApp/SndFac", "Encounter", ["1032702", "81456267"])
    assert encounter["status"] == "in-progress"  # A01: admitted
    assert encounter["class"] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
        "code": "EMER",
        "display": "emergency",
    }
    assert encounter["subject"] == adt.ref(patient)
    [visit] = encounter["identifier"]
    assert visit["value"] == "81456267" and visit["type"]["coding"][0]["code"] == "VN"
    assert visit["system"] == "urn:oid:1.2.3.4.5.6"
    assert codes(encounter["type"][0]) == [("http://terminology.hl7.org/CodeSystem/v2-0007", "E")]
    assert codes(encounter["serviceType"]) == [
        ("http://terminology.hl7.org/CodeSystem/v2-0069", "EMR")
    ]
    assert codes(encounter["hospitalization"]["specialCourtesy"][0]) == [
        ("http://terminology.hl7.org/CodeSystem/v2-0099", "VIP")
    ]
    assert codes(encounter["reasonCode"][0]) == [("http://snomed.info/sct", "165002")]
    assert encounter["period"] == {"start": "2015-06-01T13:58:00Z"}  # no offset sent: UTC
    attender = adt.get(encounter["participant"][0]["individual"])
    assert attender["name"][0]["family"] == "Doctor"
    assert attender["identifier"][0]["value"] == "214425290"
    assert encounter["participant"][0]["type"][0]["coding"][0]["code"] == "ATND"
    room = adt.get(encounter["location"][0]["location"])
    assert room["resourceType"] == "Location" and room["name"] == "EMERG"
    assert encounter["location"][0]["status"] == "active"
    assert encounter["location"][1]["status"] == "completed"  # PV1-6: the prior location
    height = adt.one("Observation")
    assert codes(height["code"]) == [(LOINC, "8302-2")]
    assert height["valueQuantity"] == {
        "value": 190,
        "unit": "centimeter",
        "code": "cm",
        "system": "http://unitsofmeasure.org",
    }
    assert height["status"] == "final" and height["encounter"] == adt.ref(encounter)
    allergy = adt.one("AllergyIntolerance")
    assert allergy["code"]["text"] == "Timothy Grass"
    assert allergy["category"] == ["environment"] and allergy["patient"] == adt.ref(patient)
    assert allergy["reaction"][0]["manifestation"][0]["text"] == "Sneeze"
    coverage = adt.one("Coverage")
    assert coverage["payor"] == [{"display": "MyInsurancePlan"}]
    assert coverage["period"] == {"start": "2015-01-01", "end": "2015-12-31"}
    assert coverage["beneficiary"] == adt.ref(patient)


def test_adt_a01_agrees_with_the_ig_expected_bundle(sample: Callable[[str], Result]) -> None:
    """Where the IG's expected bundle applies (its values read right off the message), the
    hub's resources carry the same values."""
    bundle = json.loads((DATA / "ig-ADT_A01.expected-bundle.json").read_text())
    expected: dict[str, list[dict[str, Any]]] = {}
    for entry in bundle["entry"]:
        expected.setdefault(entry["resource"]["resourceType"], []).append(entry["resource"])
    adt = sample("ADT_A01")
    [want] = expected["Patient"]
    got = adt.one("Patient")
    for identifier in want["identifier"][:3]:  # MR, DL, SSN (the fourth is IN1's)
        mine = identifiers(got)[identifier["value"]]
        assert mine["type"]["coding"][0]["code"] == identifier["type"]["coding"][0]["code"]
        assert mine.get("period") == identifier.get("period")
        if "system" in identifier:
            assert mine["system"] == identifier["system"]
    for mine, theirs in zip(got["name"], want["name"], strict=True):
        for key in ("family", "given", "prefix", "suffix", "use"):
            assert mine.get(key) == theirs.get(key), key
    assert got["gender"] == want["gender"]
    assert got["multipleBirthInteger"] == want["multipleBirthInteger"]
    assert got["deceasedBoolean"] == want["deceasedBoolean"]
    for mine, theirs in zip(got["address"], want["address"], strict=True):
        for key in ("line", "postalCode", "state", "country"):
            assert mine.get(key) == theirs.get(key), key
        assert mine["city"] == theirs["city"].strip()  # the hub trims values
    [encounter] = expected["Encounter"]
    mine = adt.one("Encounter")
    assert mine["identifier"][0]["value"] == encounter["identifier"][0]["value"]
    assert mine["type"] == encounter["type"]
    assert codes(mine["serviceType"])[0][1] == codes(encounter["serviceType"])[0][1]
    [observation] = expected["Observation"]
    assert adt.one("Observation")["valueQuantity"]["value"] == observation["valueQuantity"]["value"]
    assert adt.one("Observation")["code"]["text"] == observation["code"]["text"]
    [allergy] = expected["AllergyIntolerance"]
    assert adt.one("AllergyIntolerance")["code"]["text"] == allergy["code"]["text"]
    [coverage] = expected["Coverage"]
    assert adt.one("Coverage")["payor"] == coverage["payor"]
    assert adt.one("Coverage")["period"]["start"] == coverage["period"]["start"]


def test_lineage_names_v2_places_and_list_positions(sample: Callable[[str], Result]) -> None:
    adt = sample("ADT_A01")
    lineage = adt.lineage(adt.one("Patient"))
    assert lineage["Patient.name[0].family"] == "PID-5.1"
    assert lineage["Patient.name[1].family"] == "PID-5[2].1"
    assert lineage["Patient.identifier[1].value"] == "PID-3[2].1"
    assert lineage["Patient.identifier[0].system"] == "PID-3.4"
    assert lineage["Patient.birthDate"] == "PID-7"
    assert lineage["Patient.contact[0].name.family"] == "NK1-2.1"
    # IN3 has no map: it is kept in the lineage of the message's first resource.
    assert lineage["Patient (not mapped)"] == "IN3"
    observation = adt.one("Observation")
    assert adt.lineage(observation)["Observation.valueQuantity.value"] == "OBX-5"


# ---- ORU_R01 ---------------------------------------------------------------------------


def test_oru_r01_report_results_and_order(sample: Callable[[str], Result]) -> None:
    oru = sample("ORU_R01")
    assert oru.mapping == "hl7v2-oru" and oru.source == "LabApp/LabFac"
    patient = oru.one("Patient")
    assert identifiers(patient)["1032702"]["system"] == "urn:oid:3.4.5.6.7"
    report = oru.one("DiagnosticReport")
    assert report["status"] == "final"
    assert codes(report["code"]) == [(LOINC, "51523-9")]
    assert report["identifier"][0] == {
        "value": "LAB4432",
        "system": "urn:oid:8.7.6.4",
        "assigner": {"display": "LabFac"},
    }
    assert report["effectiveDateTime"] == "2015-06-01T16:08:00Z"
    assert report["issued"] == "2015-06-01T18:11:00Z"
    # One OBX group, one Observation; the report lists them in order.
    observations = oru.all("Observation")
    assert report["result"] == [oru.ref(o) for o in observations]
    values = [(codes(o["code"])[0], o["valueQuantity"]) for o in observations]
    assert values == [
        ((LOINC, "6153-1"), {"value": 3.9, "unit": "kU/L", "code": "kU/L"}),
        ((LOINC, "6041-8"), {"value": 0.59, "unit": "kU/L", "code": "kU/L"}),
        # SN `<0.10`: a comparator and a number
        ((LOINC, "6265-3"), {"value": 0.1, "comparator": "<", "unit": "kU/L", "code": "kU/L"}),
    ]
    first = observations[0]
    assert first["status"] == "final" and first["subject"] == oru.ref(patient)
    assert first["referenceRange"] == [{"text": "<0.10"}]
    assert codes(first["interpretation"][0]) == [
        ("http://terminology.hl7.org/CodeSystem/v2-0078", "A")
    ]
    assert first["category"][0]["coding"][0]["code"] == "laboratory"
    assert first["effectiveDateTime"] == "2015-06-01T16:08:00Z"
    performer = oru.get(first["performer"][0])
    assert performer["name"][0]["family"] == "Observer"
    order = oru.one("ServiceRequest")
    assert report["basedOn"] == [oru.ref(order)] and first["basedOn"] == [oru.ref(order)]
    assert order["status"] == "completed" and order["intent"] == "order"
    assert order["identifier"][0]["value"] == "ORD777888"
    assert oru.get(order["requester"])["name"][0]["family"] == "Radon"  # ORC-12
    assert order["note"] == [{"text": "Allergy test interpretations are subjective."}]
    assert oru.one("Encounter")["status"] == "in-progress"


# ---- VXU_V04 ---------------------------------------------------------------------------


def test_vxu_v04_immunizations(sample: Callable[[str], Result]) -> None:
    vxu = sample("VXU_V04")
    assert vxu.mapping == "hl7v2-vxu"
    patient = vxu.one("Patient")
    given, first_history, second_history = vxu.all("Immunization")
    assert codes(given["vaccineCode"]) == [("http://hl7.org/fhir/sid/ndc", "49281-0215-88")]
    assert given["status"] == "completed" and given["primarySource"] is True
    assert given["occurrenceDateTime"] == "2015-06-24T08:30:00Z"
    assert given["doseQuantity"] == {
        "value": 0.5,
        "unit": "mL",
        "code": "mL",
        "system": "http://unitsofmeasure.org",
    }
    assert given["lotNumber"] == "315841" and given["expirationDate"] == "2015-12-16"
    assert given["manufacturer"] == {"display": "Sanofi Pasteur"}
    assert codes(given["route"]) == [("http://ncithesaurus-stage.nci.nih.gov", "C28161")]
    assert codes(given["site"]) == [("http://terminology.hl7.org/CodeSystem/v2-0163", "RD")]
    administering = vxu.get(given["performer"][0]["actor"])
    assert administering["name"][0]["family"] == "Jackson"
    assert given["patient"] == vxu.ref(patient)
    for historical, day in ((first_history, "2014-10-12"), (second_history, "2013-11-12")):
        assert codes(historical["vaccineCode"]) == [("http://hl7.org/fhir/sid/cvx", "88")]
        assert historical["occurrenceDateTime"] == day  # a date stays a date
        assert historical["primarySource"] is False
        assert "doseQuantity" not in historical  # 999: unknown amount
        assert "route" not in historical  # the RXR belongs to the first RXA only
    funding, eligibility, vis_type, vis_date = vxu.all("Observation")
    assert codes(funding["code"]) == [(LOINC, "30963-3")]
    assert codes(funding["valueCodeableConcept"]) == [
        ("urn:oid:2.16.840.1.114222.4.5.274", "PHC70")
    ]
    assert codes(eligibility["valueCodeableConcept"]) == [
        ("http://terminology.hl7.org/CodeSystem/v2-0064", "V01")
    ]
    assert vis_type["valueCodeableConcept"]["text"] == "Tetanus/Diphtheria (Td) Vaccine VIS"
    assert vis_date["valueDateTime"] == "2015-06-24"
    assert vxu.one("Patient")["generalPractitioner"]


# ---- ORM_O01 and OML_O21 ---------------------------------------------------------------


def test_orm_o01_order(sample: Callable[[str], Result]) -> None:
    orm = sample("ORM_O01")
    assert orm.mapping == "hl7v2-orders"
    order = orm.one("ServiceRequest")
    assert order["status"] == "active"  # ORC-1 NW
    assert order["intent"] == "order"
    assert codes(order["code"]) == [(LOINC, "51523-9")]
    assert order["identifier"][0]["value"] == "ORD777888"  # OBR-2, the placer number
    assert order["authoredOn"] == "2015-06-01T16:10:00Z"
    assert orm.get(order["requester"])["name"][0]["family"] == "Radon"  # ORC-12
    assert order["note"] == [{"text": "Bluegrass is in bloom at the moment"}]
    assert order["subject"] == orm.ref(orm.one("Patient"))
    assert orm.one("AllergyIntolerance")["onsetDateTime"] == "2014-06"
    assert orm.one("Coverage")["payor"] == [{"display": "Medicare"}]


def test_oml_o21_order_and_specimen(sample: Callable[[str], Result]) -> None:
    oml = sample("OML_O21")
    assert oml.mapping == "hl7v2-orders"
    order = oml.one("ServiceRequest")
    specimen = oml.one("Specimen")
    assert order["specimen"] == [oml.ref(specimen)]
    assert codes(specimen["type"]) == [("http://terminology.hl7.org/CodeSystem/v2-0487", "SER")]
    assert specimen["identifier"][0]["value"] == "SPM1234"
    assert codes(specimen["collection"]["method"]) == [
        ("http://terminology.hl7.org/CodeSystem/v2-0488", "VENIP")
    ]
    assert specimen["collection"]["quantity"] == {
        "value": 2,
        "unit": "milliliter",
        "code": "mL",
        "system": "http://unitsofmeasure.org",
    }
    assert specimen["collection"]["collectedDateTime"] == "2015-06-01T16:08:00Z"
    # \R\ in SPM-14 is a repetition character in the text, not a split.
    assert specimen["note"] == [{"text": "This is a wonderful blood sample.~My first blood draw!"}]
    assert oml.one("Patient")["name"][0]["family"] == "Everywoman"


# ---- SIU_S12 ---------------------------------------------------------------------------


def test_siu_s12_appointment(sample: Callable[[str], Result]) -> None:
    siu = sample("SIU_S12")
    assert siu.mapping == "hl7v2-siu"
    appointment = siu.one("Appointment")
    assert appointment["id"] == resource_id("SndApp/SndFac", "Appointment", ["13030"])
    assert appointment["status"] == "booked"
    assert appointment["start"] == "2015-06-13T14:00:00Z"
    assert appointment["end"] == "2016-06-21T14:15:00Z"
    assert appointment["minutesDuration"] == 15
    assert appointment["appointmentType"]["coding"][0]["code"] == "Normal"
    assert appointment["reasonCode"][0]["text"] == "OFFICE VISIT-15"
    actors = [p["actor"] for p in appointment["participant"]]
    assert actors[0] == siu.ref(siu.one("Patient"))
    kinds = [siu.get(a)["resourceType"] for a in actors if "reference" in a]
    assert kinds == ["Patient", "Location", "Practitioner"]
    assert siu.get(actors[2])["name"][0]["family"] == "Pullen"
    assert {"display": "Pullen, Jeri"} in actors
    assert all(p["status"] == "accepted" for p in appointment["participant"])


# ---- MDM_T02 ---------------------------------------------------------------------------


def test_mdm_t02_document(sample: Callable[[str], Result]) -> None:
    mdm = sample("MDM_T02")
    assert mdm.mapping == "hl7v2-mdm" and mdm.source == "HIE/REDDING HOSPITAL"
    patient = mdm.one("Patient")
    assert patient["name"][0] == {
        "family": "JOHN",
        "given": ["DOE", "TEST"],
        "suffix": ["JR."],
        "use": "usual",
    }
    assert patient["birthDate"] == "1994-12-01" and patient["gender"] == "male"
    document = mdm.one("DocumentReference")
    assert document["status"] == "current" and document["docStatus"] == "final"
    assert document["type"]["coding"][0]["code"] == "PN"
    assert document["date"] == "2023-08-20T17:49:13Z"
    assert mdm.get(document["author"][0])["name"][0]["family"] == "Radon"  # TXA-9
    assert mdm.get(document["authenticator"])["name"][0]["family"] == "MITCHELL"
    assert document["description"] == "Discharge Summary"
    assert document["subject"] == mdm.ref(patient)
    texts = [c["attachment"] for c in document["content"]]
    import base64

    decoded = [base64.b64decode(a["data"]).decode() for a in texts if "data" in a]
    assert decoded[0] == "Transcription Authentication Interface Message Text"
    # FT with \.br\: line breaks
    assert decoded[1].startswith("Critical Values Entered On:  08/22/2023 2:11 EDT \n")
    # ED: a PDF whose data is not Base64 (the IG writes a placeholder): the type is kept
    assert {"contentType": "application/pdf"} in texts
    encounter = mdm.one("Encounter")
    assert encounter["class"]["code"] == "IMP" and encounter["status"] == "in-progress"
    assert encounter["period"] == {"start": "2023-07-29T08:13:00Z"}


# ---- public messages -------------------------------------------------------------------


def test_a_public_adt_a04_maps(adapter: Hl7v2Adapter) -> None:
    """The VINAH sample (Victoria, Australia): sparse, with local codes."""
    result = run(adapter, (DATA / "public-vinah-ADT_A04.hl7").read_bytes())
    assert result.mapping == "hl7v2-adt" and result.source == "/ABCHS"
    patient = result.one("Patient")
    assert patient["identifier"][0]["value"] == "0000112234"
    assert patient["identifier"][0]["assigner"] == {"display": "100"}
    assert patient["gender"] == "unknown"  # `1` is no HL7 0001 code
    assert patient["address"][0] == {"city": "RICHMOND", "postalCode": "3121"}
    encounter = result.one("Encounter")
    assert encounter["status"] == "arrived"  # A04: registered
    assert encounter["class"]["code"] == "AMB"
    # No visit number: the Encounter is this message's (MSH-10).
    assert encounter["id"] == resource_id("/ABCHS", "Encounter", ["0000112234", "12334456778890"])


def test_a_public_oru_with_an_impossible_birth_date_is_rejected_naming_pid_7(
    adapter: Hl7v2Adapter,
) -> None:
    raw = (DATA / "public-ghh-lab-ORU_R01.hl7").read_bytes()
    with pytest.raises(MappingError) as caught:
        run(adapter, raw)
    assert caught.value.field == "PID-7"
    assert "196203520" in str(caught.value)
    fixed = run(adapter, raw.replace(b"|196203520|", b"|19620320|"))
    [glucose, other] = fixed.all("Observation")
    assert glucose["valueQuantity"] == {"value": 182, "unit": "mg/dl", "code": "mg/dl"}
    assert "value" not in {k[:5] for k in other}  # FN is no value type: no value
    # Its `F` sits in OBR-24, not OBR-25 (the result status): the status is unknown.
    assert fixed.one("DiagnosticReport")["status"] == "unknown"
    assert fixed.one("Patient")["birthDate"] == "1962-03-20"


# ---- ids, choice, sources --------------------------------------------------------------


def test_a_resend_maps_to_the_same_ids(adapter: Hl7v2Adapter) -> None:
    raw = (DATA / "ig-ORU_R01.hl7").read_bytes()
    first = run(adapter, raw)
    corrected = run(
        adapter,
        raw.replace(
            b"|3.9|kU/L|<0.10|A^Abnormal^HL70078||N^None - generic normal range^HL70080|F|",
            b"|4.2|kU/L|<0.10|A^Abnormal^HL70078||N^None - generic normal range^HL70080|C|",
        ),
    )
    assert [r["id"] for r in first.mapped.resources] == [
        r["id"] for r in corrected.mapped.resources
    ]
    observation = corrected.all("Observation")[0]
    assert observation["status"] == "corrected" and observation["valueQuantity"]["value"] == 4.2


def test_the_message_map_is_chosen_by_msh_9(adapter: Hl7v2Adapter) -> None:
    catalogue = adapter.catalogue
    assert catalogue.choose("ADT", "A08").name == "hl7v2-adt"  # type: ignore[union-attr]
    assert catalogue.choose("ORU", "R01", "ORU_R01").name == "hl7v2-oru"  # type: ignore[union-attr]
    assert catalogue.choose("SIU", "S15").name == "hl7v2-siu"  # type: ignore[union-attr]
    assert catalogue.choose("ZZZ", "Z01") is None
    raw = (DATA / "ig-ADT_A01.hl7").read_bytes().replace(b"ADT^A01^ADT_A01", b"ZZZ^Z01")
    with pytest.raises(MappingError) as caught:
        run(adapter, raw)
    assert str(caught.value) == "no mapping for message type ZZZ^Z01"
    assert caught.value.field == "MSH-9"


@dataclass
class Header:
    message_type: str
    trigger: str
    structure: str = ""
    sending_application: str = ""
    sending_facility: str = ""
    version: str = "2.5.1"


def test_accepts_answers_the_receiver(adapter: Hl7v2Adapter) -> None:
    assert adapter.accepts(Header("ADT", "A01", "ADT_A01", "SndApp", "SndFac")) is None
    assert adapter.accepts(Header("ORU", "R01")) is None
    assert adapter.accepts(Header("ZZZ", "Z01")) == "no mapping for message type ZZZ^Z01"
    assert adapter.accepts(Header("", "")) == "no mapping for message type (empty MSH-9)"


@pytest.mark.parametrize(
    ("event", "status"),
    [
        ("A01", "in-progress"),
        ("A03", "finished"),
        ("A04", "arrived"),
        ("A05", "planned"),
        ("A08", "unknown"),
        ("A11", "cancelled"),
        ("A13", "in-progress"),
    ],
)
def test_the_encounter_status_follows_the_adt_event(
    adapter: Hl7v2Adapter, event: str, status: str
) -> None:
    raw = (
        (DATA / "ig-ADT_A01.hl7").read_bytes().replace(b"ADT^A01^ADT_A01", f"ADT^{event}".encode())
    )
    result = run(adapter, raw)
    assert result.one("Encounter")["status"] == status
    # Every event is about the same patient and visit: the same resources.
    assert result.one("Encounter")["id"] == resource_id(
        "SndApp/SndFac", "Encounter", ["1032702", "81456267"]
    )


def test_a03_with_a_discharge_time_ends_the_visit(adapter: Hl7v2Adapter) -> None:
    raw = (DATA / "ig-ADT_A01.hl7").read_bytes().replace(b"ADT^A01^ADT_A01", b"ADT^A03")
    raw = raw.replace(b"|20150601135800|||", b"|20150601135800|20150603101500+0200||")
    encounter = run(adapter, raw).one("Encounter")
    assert encounter["status"] == "finished"
    assert encounter["period"] == {
        "start": "2015-06-01T13:58:00Z",
        "end": "2015-06-03T10:15:00+02:00",
    }


@pytest.fixture()
def own_maps(tmp_path: Path) -> Path:
    root = tmp_path / "hl7v2"
    shutil.copytree(MAPPINGS, root)
    return root


def test_a_source_file_overrides_a_field_map_and_adds_a_z_segment(own_maps: Path) -> None:
    (own_maps / "sources" / "sndapp.yaml").write_text(
        """
source: SndApp/SndFac
version: 3
options: {timezone: Europe/Amsterdam}
tables:
  assigning-authorities: {V2FHIR: "https://sndfac.example.org/mrn"}
resources:
  - name: patient                       # a field map changed
    elements:
      gender: {value: unknown}
      extension[*]#vip:
        each: ZPI
        elements:
          url: {value: "https://sndfac.example.org/fhir/vip"}
          valueBoolean: {field: ZPI-2, lookup: yes-no}
  - name: flag                          # a Z-segment map of its own
    type: Flag
    segment: ZPI
    id: [PID-3.1, ZPI-1]
    elements:
      status: {value: active}
      code.text: ZPI-3
      subject: {type: reference, resource: Patient, key: [PID-3.1]}
"""
    )
    adapter = Hl7v2Adapter(own_maps)
    raw = (DATA / "ig-ADT_A01.hl7").read_bytes().rstrip(b"\r") + b"\rZPI|1|Y|Fall risk\r"
    result = run(adapter, raw)
    patient = result.one("Patient")
    assert patient["gender"] == "unknown"
    assert identifiers(patient)["1032702"]["system"] == "https://sndfac.example.org/mrn"
    assert {"url": "https://sndfac.example.org/fhir/vip", "valueBoolean": True} in patient[
        "extension"
    ]
    flag = result.one("Flag")
    assert flag["code"] == {"text": "Fall risk"} and flag["subject"] == result.ref(patient)
    # The sender's zone for times without an offset, and its version on the map.
    assert result.one("Encounter")["period"] == {"start": "2015-06-01T13:58:00+02:00"}
    mapper = adapter.mapper_for(adapter.parse(raw))
    assert mapper.mapping.version == "1+sndapp.3"
    # Other senders are untouched.
    other = run(adapter, (DATA / "ig-ORU_R01.hl7").read_bytes())
    assert other.one("Patient")["gender"] == "female" and not other.all("Flag")


def test_a_map_naming_an_unknown_datatype_does_not_load(own_maps: Path) -> None:
    path = own_maps / "segments" / "patient.yaml"
    path.write_text(path.read_text().replace("datatype: XPN", "datatype: XPQ", 1))
    with pytest.raises(ValueError, match="no datatype map 'XPQ'"):
        Catalogue(own_maps)


@pytest.mark.parametrize(
    ("text", "fhir"),
    [
        ("2015", "2015"),
        ("201506", "2015-06"),
        ("20150601", "2015-06-01"),
        ("2015060113", "2015-06-01T13:00:00Z"),
        ("201506011358", "2015-06-01T13:58:00Z"),
        ("20150601135823", "2015-06-01T13:58:23Z"),
        ("20150601135823.1234", "2015-06-01T13:58:23.1234Z"),
        ("20150601135823+0100", "2015-06-01T13:58:23+01:00"),
        ("20150601135823.43-0500", "2015-06-01T13:58:23.43-05:00"),
    ],
)
def test_dtm_keeps_its_precision_and_offset(text: str, fhir: str) -> None:
    assert datetime_of(text, None) == fhir


@pytest.mark.parametrize("text", ["2015-06-01", "20151301", "201506011360", "abc", "2015060"])
def test_a_bad_dtm_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        datetime_of(text, None)


def test_rde_o11_pharmacy_order(adapter: Hl7v2Adapter) -> None:
    result = run(adapter, (DATA / "written-RDE_O11.hl7").read_bytes())
    assert result.mapping == "hl7v2-rde"
    order = result.one("MedicationRequest")
    assert order["status"] == "active" and order["intent"] == "order"
    assert codes(order["medicationCodeableConcept"]) == [
        ("http://www.nlm.nih.gov/research/umls/rxnorm", "197361")
    ]
    assert order["authoredOn"] == "2024-03-10T09:10:00+01:00"
    [dosage] = order["dosageInstruction"]
    assert dosage["text"] == "Take one tablet every morning"
    assert codes(dosage["route"]) == [("http://terminology.hl7.org/CodeSystem/v2-0162", "PO")]
    assert dosage["doseAndRate"][0]["doseQuantity"] == {
        "value": 5,
        "unit": "milligram",
        "code": "mg",
        "system": "http://unitsofmeasure.org",
    }
    assert order["dispenseRequest"]["quantity"]["value"] == 30
    assert order["dispenseRequest"]["numberOfRepeatsAllowed"] == 2
    assert order["note"] == [{"text": "Check blood pressure after one week"}]
    assert result.get(order["requester"])["name"][0]["family"] == "Visser"
    assert result.one("AllergyIntolerance")["criticality"] == "high"
    assert result.one("AllergyIntolerance")["category"] == ["medication"]


_SAMPLES = sorted(p.name for p in DATA.glob("ig-*.hl7"))


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(_SAMPLES),
    at=st.integers(min_value=0, max_value=10_000),
    junk=st.text(alphabet=st.sampled_from(list("|^~\\&#0123456789AZaz.:-+ \r")), max_size=40),
)
def test_a_fuzzed_sample_maps_or_is_invalid_never_crashes(name: str, at: int, junk: str) -> None:
    """Text spliced into any place of an IG message: mapped, or rejected as `Invalid`
    (naming where), never another exception."""
    adapter = _ADAPTER
    raw = (DATA / name).read_bytes()
    cut = 10 + at % max(1, len(raw) - 10)  # keep the MSH's delimiters
    spliced = raw[:cut] + junk.encode() + raw[cut:]
    try:
        tree = adapter.parse(spliced)
        mapped = adapter.map(tree, adapter.mapper_for(tree))
        for resource in mapped.resources:
            validate(resource)
    except Invalid:
        pass


_ADAPTER = Hl7v2Adapter(MAPPINGS)


def test_a_reference_to_a_made_resource_has_lineage_and_so_has_the_resource(
    sample: Callable[[str], Result],
) -> None:
    adt = sample("ADT_A01")
    encounter = adt.one("Encounter")
    assert adt.lineage(encounter)["Encounter.participant[0].individual"] == "PV1-7"
    attender = adt.get(encounter["participant"][0]["individual"])
    assert adt.lineage(attender)["Practitioner.name[0].family"] == "PV1-7.2.1"


def test_dft_p03_charges_guarantors_and_insurance(adapter: Hl7v2Adapter) -> None:
    result = run(adapter, (DATA / "written-DFT_P03.hl7").read_bytes())
    assert result.mapping == "hl7v2-dft"
    patient = result.one("Patient")
    charge, credit = result.all("ChargeItem")
    assert charge["status"] == "billable" and credit["status"] == "not-billable"
    assert codes(charge["code"]) == [("http://www.ama-assn.org/go/cpt", "80053")]
    assert charge["identifier"] == [{"value": "TX-1001"}]
    assert charge["subject"] == result.ref(patient)
    assert charge["context"] == result.ref(result.one("Encounter"))
    assert charge["occurrenceDateTime"] == "2024-03-10T08:00:00+01:00"
    assert charge["enteredDate"] == "2024-03-10T09:00:00+01:00"
    assert charge["quantity"] == {"value": 1}
    assert charge["priceOverride"] == {"value": 125.5, "currency": "EUR"}
    assert credit["priceOverride"] == {"value": -125.5, "currency": "EUR"}
    assert codes(charge["reason"][0]) == [("http://hl7.org/fhir/sid/icd-10", "E11.9")]
    assert result.get(charge["performer"][0]["actor"])["name"][0]["family"] == "Visser"
    assert result.get(charge["enterer"])["name"][0]["family"] == "Bakker"
    assert charge["note"] == [{"text": "Metabolic panel, drawn on the ward"}]
    assert result.lineage(charge)["ChargeItem.priceOverride.value"] == "FT1-11.1.1"

    # GT1: the spouse is a RelatedPerson; the patient guaranteeing himself is not.
    spouse = result.one("RelatedPerson")
    assert spouse["name"][0] == {"family": "Jansen", "given": ["Maria"]}
    assert spouse["patient"] == result.ref(patient)
    assert spouse["birthDate"] == "1960-01-01" and spouse["gender"] == "female"
    assert [codes(r) for r in spouse["relationship"]] == [
        [("http://terminology.hl7.org/CodeSystem/v2-0063", "SPO")],
        [("http://terminology.hl7.org/CodeSystem/v3-RoleCode", "GUAR")],
    ]
    account = result.one("Account")
    assert account["status"] == "active"
    assert account["identifier"][0]["value"] == "ACC-31"
    assert account["subject"] == [result.ref(patient)]
    assert account["guarantor"] == [
        {"party": result.ref(spouse), "period": {"start": "2024-01-01"}},
        {"party": result.ref(patient)},
    ]

    # IN1 with its IN2.
    coverage = result.one("Coverage")
    assert coverage["payor"] == [{"display": "Zilveren Kruis"}]
    values = [i["value"] for i in coverage["identifier"]]
    assert values == ["POL-889", "PLAN-A", "MEM-42", "MC-123", "MA-456"]
    assert codes(coverage["identifier"][3]["type"]) == [(V2_0203, "MC")]
    assert codes(coverage["relationship"]) == [
        ("http://terminology.hl7.org/CodeSystem/v2-0063", "SEL")
    ]  # IN2-72, IN1-17 being empty
    assert result.lineage(coverage)["Coverage.identifier[3].value"] == "IN2-6.1"
    unmapped = {s for e, s in result.mapped.lineage[0] if e.endswith("(not mapped)")}
    assert not {"FT1", "GT1", "GT1[2]", "IN2"} & unmapped


def test_rxo_pharmacy_order_in_omp_o09_and_orm_o01(adapter: Hl7v2Adapter) -> None:
    raw = (DATA / "written-OMP_O09.hl7").read_bytes()
    for message in (raw, raw.replace(b"OMP^O09^OMP_O09", b"ORM^O01^ORM_O01")):
        result = run(adapter, message)
        assert result.mapping == "hl7v2-orders"
        order = result.one("MedicationRequest")
        assert order["status"] == "active" and order["intent"] == "original-order"
        assert codes(order["medicationCodeableConcept"]) == [
            ("http://www.nlm.nih.gov/research/umls/rxnorm", "197361")
        ]
        assert order["identifier"][0]["value"] == "ORD-56"
        assert order["authoredOn"] == "2024-03-10T09:10:00+01:00"
        [dosage] = order["dosageInstruction"]
        assert dosage["text"] == "Take one tablet every morning"
        assert codes(dosage["route"]) == [("http://terminology.hl7.org/CodeSystem/v2-0162", "PO")]
        mg = {"unit": "milligram", "code": "mg", "system": "http://unitsofmeasure.org"}
        assert dosage["doseAndRate"][0]["doseRange"] == {
            "low": {"value": 5, **mg},
            "high": {"value": 10, **mg},
        }
        assert dosage["doseAndRate"][0]["type"]["coding"][0]["code"] == "ordered"
        assert order["dispenseRequest"]["quantity"]["value"] == 30
        assert order["dispenseRequest"]["quantity"]["code"] == "{tbl}"
        assert order["dispenseRequest"]["numberOfRepeatsAllowed"] == 2
        assert order["substitution"] == {"allowedBoolean": True}
        assert result.get(order["requester"])["name"][0]["family"] == "de Vries"  # RXO-14
        assert order["note"] == [{"text": "Start low, raise after one week"}]
        assert result.all("ServiceRequest") == []


def test_a40_maps_the_survivor_and_the_merged_patient(adapter: Hl7v2Adapter) -> None:
    raw = (
        b"MSH|^~\\&|ADT1|HOSP|HUB|HUB|20240301120000||ADT^A40^ADT_A39|M1|P|2.5.1\r"
        b"EVN|A40|20240301120000\r"
        b"PID|1||Y2002^^^HOSP^MR||Survivor^Pat\r"
        b"MRG|X1001^^^HOSP^MR\r"
        b"PID|2||Y3003^^^HOSP^MR||Other^Pat\r"
        b"MRG|X4004^^^HOSP^MR\r"
    )
    result = run(adapter, raw)
    assert result.mapping == "hl7v2-merge"
    y, x, y3, x4 = (
        resource_id("ADT1/HOSP", "Patient", [k]) for k in ("Y2002", "X1001", "Y3003", "X4004")
    )
    assert result.mapped.merges == [
        ("Patient", x, y, "MRG-1.1"),
        ("Patient", x4, y3, "MRG[2]-1.1"),
    ]
    by_id = {r["id"]: r for r in result.all("Patient")}
    assert by_id[y]["link"] == [{"type": "replaces", "other": {"reference": f"Patient/{x}"}}]
    assert by_id[x]["active"] is False
    assert by_id[x]["link"] == [{"type": "replaced-by", "other": {"reference": f"Patient/{y}"}}]
    assert by_id[x4]["link"][0]["other"] == {"reference": f"Patient/{y3}"}
    assert by_id[x]["identifier"][0]["value"] == "X1001"
    assert result.mapped.order_key == "X1001"
