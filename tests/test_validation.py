"""Validation that real R4 data needs: primitive extensions wherever R4 allows them, kept as
sent, and required bindings enforced (https://hl7.org/fhir/R4/terminologies.html#required).
REST tests run on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from hub.errors import Invalid
from hub.fhir import validate
from hub.fhir.bindings import tables

FHIR = {"Content-Type": "application/fhir+json"}
ABSENT = {
    "extension": [
        {
            "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
            "valueCode": "unknown",
        }
    ]
}

PRIMITIVE_EXTENSIONS: dict[str, dict[str, Any]] = {
    "an extension's value with extensions only": {
        "resourceType": "Patient",
        "extension": [{"url": "http://example.org/x", "_valueDateTime": ABSENT}],
    },
    "an extension's value and its extensions": {
        "resourceType": "Patient",
        "extension": [{"url": "http://example.org/x", "valueString": "s", "_valueString": ABSENT}],
    },
    "nested and modifier extensions, an extension on an element": {
        "resourceType": "Patient",
        "modifierExtension": [{"url": "http://example.org/m", "_valueBoolean": ABSENT}],
        "extension": [
            {
                "url": "http://example.org/outer",
                "extension": [
                    {
                        "url": "inner",
                        "_valueCode": {
                            "id": "c1",
                            "extension": [
                                {"url": "http://example.org/deeper", "_valueString": ABSENT}
                            ],
                        },
                    }
                ],
            }
        ],
        "name": [{"extension": [{"url": "http://example.org/n", "_valueInteger": ABSENT}]}],
    },
    "arrays with null placeholders": {
        "resourceType": "Patient",
        "name": [{"family": "Doe", "given": ["Jo", None], "_given": [None, ABSENT]}],
        "address": [{"line": [None, "1 Main St"], "_line": [ABSENT, None]}],
    },
    "a primitive with extensions only": {"resourceType": "Patient", "_birthDate": ABSENT},
    "a required primitive with extensions only": {
        "resourceType": "Observation",
        "_status": ABSENT,
        "code": {"text": "weight"},
    },
    "in backbone elements, datatypes and contained resources": {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "_code": ABSENT}]},
        "valueQuantity": {"_value": ABSENT, "unit": "kg"},
        "component": [{"code": {"text": "c"}, "_valueString": ABSENT}],
        "contained": [{"resourceType": "Patient", "id": "p", "_active": ABSENT}],
    },
}


@pytest.mark.parametrize("case", sorted(PRIMITIVE_EXTENSIONS))
def test_primitive_extensions_are_stored_and_read_back_as_sent(
    client: TestClient, case: str
) -> None:
    resource = PRIMITIVE_EXTENSIONS[case]
    sent = orjson.dumps(resource)
    created = client.post(f"/fhir/{resource['resourceType']}", content=sent, headers=FHIR)
    assert created.status_code == 201, created.text
    back = client.get(f"/fhir/{resource['resourceType']}/{created.json()['id']}")
    assert back.status_code == 200
    got = orjson.loads(back.content)
    assert got.pop("meta").keys() == {"versionId", "lastUpdated"}
    assert got.pop("id")
    assert orjson.dumps(got) == sent


def test_primitive_extensions_are_stored_as_sent_by_put(client: TestClient) -> None:
    resource = {"id": "ext1", **PRIMITIVE_EXTENSIONS["an extension's value with extensions only"]}
    r = client.put("/fhir/Patient/ext1", content=orjson.dumps(resource), headers=FHIR)
    assert r.status_code == 201, r.text
    got = orjson.loads(client.get("/fhir/Patient/ext1").content)
    del got["meta"]
    assert got == resource


@pytest.mark.parametrize(
    ("extension", "expression"),
    [
        ({"url": "u", "_valueString": {"extension": "not a list"}}, "._valueString.extension"),
        ({"url": "u", "_valueString": {}}, "._valueString"),
        ({"url": "u", "_valueString": {"extension": [{"valueCode": "x"}]}}, ".url"),
    ],
)
def test_an_extension_values_extensions_are_still_checked(
    extension: dict[str, Any], expression: str
) -> None:
    with pytest.raises(Invalid) as e:
        validate({"resourceType": "Patient", "extension": [extension]})
    paths = [p for issue in e.value.issues for p in issue.expression]
    assert any(p.startswith("Patient.extension[0]._valueString") for p in paths), paths
    assert any(p.endswith(expression) for p in paths), paths


def test_a_complex_value_is_not_a_primitive_extension() -> None:
    with pytest.raises(Invalid, match=r"Patient.extension\[0\]._valueQuantity"):
        validate({"resourceType": "Patient", "extension": [{"url": "u", "_valueQuantity": {}}]})


# --- required bindings ------------------------------------------------------------------

OBSERVATION = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
BAD_CODES: list[tuple[dict[str, Any], str]] = [
    ({"resourceType": "Patient", "gender": "banana"}, "Patient.gender"),
    ({**OBSERVATION, "status": "not-a-status"}, "Observation.status"),
    (
        {"resourceType": "Encounter", "status": "walking", "class": {"code": "AMB"}},
        "Encounter.status",
    ),
    ({"resourceType": "Bundle", "type": "pile"}, "Bundle.type"),
    (
        {
            **OBSERVATION,
            "component": [
                {"code": {"text": "c"}},
                {"code": {"text": "d"}, "valueQuantity": {"value": 1, "comparator": "about"}},
            ],
        },
        "Observation.component[1].valueQuantity.comparator",
    ),
    ({"resourceType": "Patient", "name": [{"use": "nick"}]}, "Patient.name[0].use"),
    (
        {"resourceType": "Patient", "telecom": [{"system": "pager", "use": "car"}]},
        "Patient.telecom[0].use",
    ),
    (
        {"resourceType": "Patient", "contained": [{**OBSERVATION, "id": "o", "status": "x"}]},
        "Patient.contained[0].status",
    ),
    (
        {"resourceType": "Patient", "extension": [{"url": "u", "valueHumanName": {"use": "x"}}]},
        "Patient.extension[0].valueHumanName.use",
    ),
    (
        {"resourceType": "Questionnaire", "status": "draft", "subjectType": ["Patient", "Pet"]},
        "Questionnaire.subjectType[1]",
    ),
    (
        {
            "resourceType": "Questionnaire",
            "status": "draft",
            "item": [
                {"linkId": "1", "type": "group", "item": [{"linkId": "1.1", "type": "essay"}]}
            ],
        },
        "Questionnaire.item[0].item[0].type",
    ),
    (
        {
            "resourceType": "Condition",
            "subject": {"reference": "Patient/p"},
            "clinicalStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                        "code": "cured",
                    }
                ]
            },
        },
        "Condition.clinicalStatus.coding[0]",
    ),
    (
        {
            "resourceType": "Condition",
            "subject": {"reference": "Patient/p"},
            "clinicalStatus": {"text": "better"},
        },
        "Condition.clinicalStatus",
    ),
    (
        {"resourceType": "Evidence", "status": "done"},  # a type without an R4B model
        "Evidence.status",
    ),
]


@pytest.mark.parametrize(("resource", "expression"), BAD_CODES, ids=[e for _, e in BAD_CODES])
def test_a_code_outside_its_required_value_set_is_refused(
    resource: dict[str, Any], expression: str
) -> None:
    with pytest.raises(Invalid) as e:
        validate(resource)
    assert [issue.expression for issue in e.value.issues] == [(expression,)]
    assert e.value.issues[0].code == "code-invalid"
    assert e.value.issues[0].diagnostics.startswith(f"{expression}: ")


@pytest.mark.parametrize(
    "resource",
    [
        {"resourceType": "Patient", "gender": "other", "name": [{"use": "maiden"}]},
        {**OBSERVATION, "status": "entered-in-error"},
        {"resourceType": "Bundle", "type": "collection"},
        {"resourceType": "Questionnaire", "status": "draft", "subjectType": ["Patient", "Group"]},
        {  # a binding R4 does not enumerate (MIME types) is not checked
            "resourceType": "Binary",
            "contentType": "application/x-anything",
        },
        {
            "resourceType": "Condition",
            "subject": {"reference": "Patient/p"},
            "clinicalStatus": {
                "coding": [
                    {"system": "http://example.org/local", "code": "b"},
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                        "code": "remission",
                    },
                ]
            },
        },
    ],
)
def test_codes_of_the_value_set_pass(resource: dict[str, Any]) -> None:
    assert validate(resource) == resource["resourceType"]


def test_every_bad_code_is_reported() -> None:
    with pytest.raises(Invalid) as e:
        validate({"resourceType": "Patient", "gender": "x", "name": [{"use": "y"}, {"use": "z"}]})
    assert [i.expression[0] for i in e.value.issues] == [
        "Patient.gender",
        "Patient.name[0].use",
        "Patient.name[1].use",
    ]


def test_the_bindings_come_from_the_r4_definitions() -> None:
    data = tables()
    assert data.source == "hl7.fhir.r4.examples 4.0.1"
    gender = data.types["Patient"]["gender"][1]
    assert gender is not None
    assert gender.codes == {"male", "female", "other", "unknown"}
    assert data.types["Bundle.entry"]["resource"][0] == "Resource"
    bound = sum(1 for t in data.types.values() for _, b in t.values() if b is not None)
    assert bound >= 340


def test_a_bad_code_is_a_400_naming_the_element(client: TestClient) -> None:
    r = client.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "banana"})
    assert r.status_code == 400, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "code-invalid"
    assert outcome["issue"][0]["expression"] == ["Patient.gender"]
    assert "administrative-gender" in outcome["issue"][0]["diagnostics"]
    r = client.put("/fhir/Observation/o1", json={**OBSERVATION, "id": "o1", "status": "nope"})
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["Observation.status"]
