"""The routing table (hub/interactions/routes.py) is what /metadata states, and only it.

Every entry that serves requests is listed in the CapabilityStatement (an interaction
code, an operation with its definition, a compartment), every operation listed is
served, and a request for an operation the table does not hold gets a 404
OperationOutcome (a known one with another method, 405).
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from hub.fhir import R4_RESOURCE_TYPES
from hub.interactions.route import COMPARTMENT, Route
from hub.interactions.routes import ROUTES


@pytest.fixture()
def statement(client: TestClient) -> dict[str, Any]:
    r = client.get("/fhir/metadata")
    assert r.status_code == 200, r.text
    return dict(r.json())


def _outcome(r: Any, status: int, code: str, words: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == code, body
    assert words in body["issue"][0]["diagnostics"], body


def _listed(route: Route, statement: dict[str, Any]) -> bool:
    """Whether `route` appears where the CapabilityStatement lists it."""
    (rest,) = statement["rest"]
    if route.operation == "metadata":
        return statement["resourceType"] == "CapabilityStatement"
    if route.operation == COMPARTMENT:
        return "http://hl7.org/fhir/CompartmentDefinition/patient" in rest.get("compartment", [])
    entry = {"name": route.name, "definition": route.definition}
    if route.level == "system":
        if route.name is not None:
            return entry in rest.get("operation", [])
        return {"code": route.code} in rest["interaction"]
    resources = {r["type"]: r for r in rest["resource"]}
    types = route.types or R4_RESOURCE_TYPES
    if route.name is not None:
        return all(entry in resources[t].get("operation", []) for t in types)
    return all({"code": route.code} in resources[t]["interaction"] for t in types)


def test_every_route_is_listed_in_metadata(statement: dict[str, Any]) -> None:
    for route in ROUTES:
        # Each says how it is listed: an interaction code or an operation's definition.
        assert route.code or route.definition or route.operation in ("metadata", COMPARTMENT)
        if route.name is not None:
            assert route.definition, route
        assert _listed(route, statement), route


def test_the_operations_served_are_listed_with_their_definitions(
    statement: dict[str, Any],
) -> None:
    (rest,) = statement["rest"]
    resources = {r["type"]: r for r in rest["resource"]}
    assert {"name": "reindex", "definition": "urn:fhir-hub:OperationDefinition/reindex"} in rest[
        "operation"
    ]
    everything = {
        "name": "everything",
        "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
    }
    lineage = {"name": "lineage", "definition": "urn:fhir-hub:OperationDefinition/lineage"}
    assert everything in resources["Patient"]["operation"]
    assert everything not in resources["Observation"]["operation"]
    for resource in resources.values():
        assert lineage in resource["operation"], resource["type"]


def test_every_operation_listed_is_in_the_table(statement: dict[str, Any]) -> None:
    (rest,) = statement["rest"]
    served = {(r.name, r.definition) for r in ROUTES if r.name is not None}
    listed = [*rest.get("operation", [])]
    for resource in rest["resource"]:
        listed += resource.get("operation", [])
    assert listed
    for operation in listed:
        assert (operation["name"], operation["definition"]) in served, operation


def test_every_listed_operation_answers(client: TestClient, uid: str) -> None:
    """Not "unknown operation": each listed one reaches its interaction."""
    created = client.post("/fhir/Patient", json={"resourceType": "Patient", "id": "x"})
    assert created.status_code == 201, created.text
    patient = created.json()["id"]
    assert client.get(f"/fhir/Patient/{patient}/$everything").status_code == 200
    assert client.get(f"/fhir/Patient/{patient}/$lineage").status_code == 200
    job = client.get(f"/fhir/$reindex/nojob-{uid}")
    _outcome(job, 404, "not-found", "reindex job")


@pytest.mark.parametrize(
    ("method", "path", "where"),
    [
        ("GET", "/fhir/$nothing", "'$nothing'"),
        ("POST", "/fhir/$nothing", "'$nothing'"),
        ("GET", "/fhir/Patient/$nothing", "'$nothing' on Patient"),
        ("POST", "/fhir/Observation/$validate", "'$validate' on Observation"),
        ("GET", "/fhir/Patient/p1/$nothing", "'$nothing' on Patient"),
        # $everything is defined on Patient only.
        ("GET", "/fhir/Observation/o1/$everything", "'$everything' on Observation"),
    ],
)
def test_an_operation_not_in_the_table_is_not_found(
    client: TestClient, method: str, path: str, where: str
) -> None:
    body = {"resourceType": "Parameters"} if method == "POST" else None
    r = client.request(method, path, json=body)
    _outcome(r, 404, "not-found", f"Unknown operation {where}")


def test_a_known_operation_with_another_method_is_not_allowed(client: TestClient) -> None:
    _outcome(client.delete("/fhir/Patient/p1/$lineage"), 405, "not-supported", "DELETE")
    _outcome(client.post("/fhir/Patient/p1/$lineage"), 405, "not-supported", "POST")
    _outcome(client.delete("/fhir/$reindex"), 405, "not-supported", "DELETE")
    _outcome(client.delete("/fhir/$reindex/j1"), 405, "not-supported", "DELETE")
