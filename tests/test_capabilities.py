"""capabilities: https://hl7.org/fhir/R4/http.html#capabilities"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from hub.fhir import R4_RESOURCE_TYPES
from hub.interactions.context import Context
from hub.search.registry import SPECIAL

TYPE_INTERACTIONS = {
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
}
SYSTEM_INTERACTIONS = {"transaction", "batch", "history-system", "search-system"}


@pytest.fixture()
def statement(client: TestClient) -> dict[str, Any]:
    r = client.get("/fhir/metadata")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    return dict(r.json())


def _resources(statement: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (rest,) = statement["rest"]
    return {r["type"]: r for r in rest["resource"]}


def test_metadata_is_an_r4_capability_statement(statement: dict[str, Any]) -> None:
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    assert statement["status"] == "active"
    assert statement["kind"] == "instance"
    # Made when asked (an instance's statement), as a FHIR dateTime.
    made = datetime.fromisoformat(statement["date"].replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - made).total_seconds()) < 600
    assert "application/fhir+json" in statement["format"]
    assert "application/json-patch+json" in statement["patchFormat"]
    assert statement["implementation"]["url"] == "http://hub.test/fhir"
    (rest,) = statement["rest"]
    assert rest["mode"] == "server"


def test_metadata_lists_all_146_r4_resource_types_once(statement: dict[str, Any]) -> None:
    (rest,) = statement["rest"]
    listed = [r["type"] for r in rest["resource"]]
    assert len(R4_RESOURCE_TYPES) == 146
    assert len(listed) == 146
    assert Counter(listed) == Counter(R4_RESOURCE_TYPES)
    for name in (
        "Patient",
        "Observation",
        "Bundle",
        "Binary",
        "MedicinalProduct",
        "EffectEvidenceSynthesis",
        "SubstancePolymer",
    ):
        assert name in listed


def test_every_type_offers_the_instance_and_type_interactions(statement: dict[str, Any]) -> None:
    for name, resource in _resources(statement).items():
        codes = [i["code"] for i in resource["interaction"]]
        assert set(codes) == TYPE_INTERACTIONS, name
        assert len(codes) == len(set(codes)), name
        assert resource["versioning"] in ("versioned", "versioned-update")
        assert resource["readHistory"] is True
        assert resource["profile"] == f"http://hl7.org/fhir/StructureDefinition/{name}"


def test_system_interactions(statement: dict[str, Any]) -> None:
    (rest,) = statement["rest"]
    assert {i["code"] for i in rest["interaction"]} == SYSTEM_INTERACTIONS


def test_search_params_come_from_the_registry(statement: dict[str, Any], ctx: Context) -> None:
    resources = _resources(statement)
    for name, resource in resources.items():
        params = {p["name"]: p for p in resource.get("searchParam", [])}
        expected = set(SPECIAL) | set(ctx.registry.for_type(name))
        assert set(params) == expected, name
        for code, param in ctx.registry.for_type(name).items():
            assert params[code]["type"] == param.type, (name, code)
            assert params[code]["definition"].startswith(("http", "urn:"))  # a canonical URI
        assert params["_id"]["type"] == "token"

    patient = {p["name"]: p for p in resources["Patient"]["searchParam"]}
    assert "identifier" in ctx.registry.for_type("Patient")
    assert patient["identifier"]["type"] == "token"
    # A type whose registry has no identifier does not claim one.
    for bare in ("Basic", "Binary"):
        assert "identifier" not in ctx.registry.for_type(bare)
        assert "identifier" not in {p["name"] for p in resources[bare]["searchParam"]}


def test_claimed_search_params_work_and_others_are_refused(
    client: TestClient, statement: dict[str, Any], uid: str
) -> None:
    r = client.post(
        "/fhir/Patient",
        json={
            "resourceType": "Patient",
            "identifier": [{"system": "http://hub.test/sid", "value": uid}],
        },
    )
    assert r.status_code == 201
    found = client.get("/fhir/Patient", params={"identifier": f"http://hub.test/sid|{uid}"})
    assert found.status_code == 200
    assert found.json()["total"] == 1
    refused = client.get("/fhir/Basic", params={"identifier": uid})
    assert refused.status_code == 400
    assert refused.json()["resourceType"] == "OperationOutcome"


def test_metadata_answers_head_and_refuses_writes(client: TestClient) -> None:
    assert client.head("/fhir/metadata").status_code == 200
    r = client.post("/fhir/metadata", json={"resourceType": "Parameters"})
    assert r.status_code in (404, 405)
    assert r.json()["resourceType"] == "OperationOutcome"
