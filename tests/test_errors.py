"""Every error answer is an OperationOutcome with the right status, issue code and path.

Per https://hl7.org/fhir/R4/http.html: 400 for bad content, 404 for unknown
types, ids and versions, 405 for interactions a URL does not offer, 410 for
deleted resources, 412 for failed preconditions, 413/415 for unacceptable
bodies and 422 for patches that cannot be applied. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from hub.api import create_app
from hub.interactions.context import Context
from hub.settings import Settings

FHIR = {"Content-Type": "application/fhir+json"}
JSON_PATCH = {"Content-Type": "application/json-patch+json"}


def assert_outcome(
    r: httpx.Response, status: int, code: str, expression: list[str] | None = None
) -> dict[str, Any]:
    """The response is `status` with an OperationOutcome whose first issue has `code`."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    body: dict[str, Any] = r.json()
    assert body["resourceType"] == "OperationOutcome"
    issue = body["issue"][0]
    assert issue["severity"] == "error"
    assert issue["code"] == code, issue
    assert issue["diagnostics"]
    if expression is not None:
        assert issue["expression"] == expression, issue
    return body


def create(client: TestClient, resource: dict[str, Any]) -> dict[str, Any]:
    r = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=FHIR)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def patient(uid: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": "urn:sys", "value": uid}], **extra}


# --- 400: the body -----------------------------------------------------------


@pytest.mark.parametrize("raw", [b"{not json", b'{"resourceType": "Patient",}', b"\xff\xfe"])
def test_invalid_json_is_400(client: TestClient, raw: bytes) -> None:
    r = client.post("/fhir/Patient", content=raw, headers=FHIR)
    body = assert_outcome(r, 400, "invalid")
    assert "JSON" in body["issue"][0]["diagnostics"]
    r = client.put("/fhir/Patient/x", content=raw, headers=FHIR)
    assert_outcome(r, 400, "invalid")
    r = client.patch("/fhir/Patient/x", content=raw, headers=JSON_PATCH)
    assert_outcome(r, 400, "invalid")


def test_empty_body_is_400(client: TestClient) -> None:
    assert_outcome(client.post("/fhir/Patient", content=b"", headers=FHIR), 400, "invalid")
    assert_outcome(client.put("/fhir/Patient/x", content=b"", headers=FHIR), 400, "invalid")


@pytest.mark.parametrize("body", [[], "Patient", 42, None], ids=["array", "string", "int", "null"])
def test_body_that_is_no_object_is_400(client: TestClient, body: Any) -> None:
    r = client.post("/fhir/Patient", json=body, headers=FHIR)
    assert_outcome(r, 400, "invalid")


@pytest.mark.parametrize(
    ("resource", "code", "expression"),
    [
        ({"resourceType": "Patient", "birthDate": "25/12/1974"}, "value", "Patient.birthDate"),
        ({"resourceType": "Patient", "active": "maybe"}, "value", "Patient.active"),
        (
            {"resourceType": "Patient", "name": [{"given": "Peter"}]},
            "value",
            "Patient.name[0].given",
        ),
        (
            {"resourceType": "Patient", "name": [{"family": "A"}, {"period": {"start": "x"}}]},
            "value",
            "Patient.name[1].period.start",
        ),
        (
            {"resourceType": "Patient", "favouriteColour": "blue"},
            "structure",
            "Patient.favouriteColour",
        ),
        ({"resourceType": "Patient", "gender": 5}, "value", "Patient.gender"),
        ({"resourceType": "Observation", "status": "final"}, "value", "Observation.code"),
        ({"resourceType": "Encounter", "class": {"code": "AMB"}}, "value", "Encounter.status"),
        (
            {"resourceType": "MedicinalProduct", "meta": {"versionId": 3}},
            "value",
            "MedicinalProduct.meta.versionId",
        ),
        (
            {"resourceType": "MedicinalProduct", "text": {"status": "generated"}},
            "value",
            "MedicinalProduct.text.div",
        ),
    ],
    ids=[
        "birthDate",
        "boolean",
        "given-not-list",
        "nested-period",
        "unknown-element",
        "code-not-string",
        "observation-no-code",
        "encounter-no-status",
        "no-model-meta",
        "no-model-text",
    ],
)
def test_invalid_resource_is_400_with_element_path(
    client: TestClient, resource: dict[str, Any], code: str, expression: str
) -> None:
    kind = resource["resourceType"]
    r = client.post(f"/fhir/{kind}", json=resource, headers=FHIR)
    assert_outcome(r, 400, code, [expression])
    assert expression in r.json()["issue"][0]["diagnostics"]
    # An update checks the same way.
    r = client.put(f"/fhir/{kind}/v1", json={**resource, "id": "v1"}, headers=FHIR)
    assert_outcome(r, 400, code, [expression])
    assert client.get(f"/fhir/{kind}/v1").status_code == 404


def test_every_invalid_element_is_reported(client: TestClient) -> None:
    resource = {"resourceType": "Patient", "birthDate": "never", "active": "maybe"}
    body = assert_outcome(client.post("/fhir/Patient", json=resource, headers=FHIR), 400, "value")
    paths = {e for issue in body["issue"] for e in issue["expression"]}
    assert paths == {"Patient.birthDate", "Patient.active"}


@pytest.mark.parametrize("bad_id", ["has space", "x" * 65, "under_score", 12])
def test_invalid_id_is_400(client: TestClient, bad_id: Any) -> None:
    r = client.put(
        "/fhir/Patient/valid", json={"resourceType": "Patient", "id": bad_id}, headers=FHIR
    )
    assert_outcome(r, 400, "invalid", ["Patient.id"])


def test_missing_or_unknown_resource_type_in_body_is_400(client: TestClient) -> None:
    r = client.post("/fhir/Patient", json={"name": [{"family": "A"}]}, headers=FHIR)
    assert_outcome(r, 400, "invalid", ["resourceType"])
    r = client.post("/fhir/Patient", json={"resourceType": "Pateint"}, headers=FHIR)
    assert_outcome(r, 400, "invalid", ["resourceType"])


def test_resource_type_differing_from_url_is_400(client: TestClient) -> None:
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    r = client.post("/fhir/Patient", json=observation, headers=FHIR)
    body = assert_outcome(r, 400, "invalid", ["resourceType"])
    assert "Observation" in body["issue"][0]["diagnostics"]
    r = client.put("/fhir/Patient/p1", json={**observation, "id": "p1"}, headers=FHIR)
    assert_outcome(r, 400, "invalid", ["resourceType"])
    assert client.get("/fhir/Observation/p1").status_code == 404
    assert client.get("/fhir/Patient/p1").status_code == 404


def test_update_without_id_in_body_is_400(client: TestClient, uid: str) -> None:
    rid = create(client, patient(uid))["id"]
    r = client.put(f"/fhir/Patient/{rid}", json=patient(uid, active=True), headers=FHIR)
    assert_outcome(r, 400, "invalid", ["Patient.id"])
    assert client.get(f"/fhir/Patient/{rid}").headers["etag"] == 'W/"1"'


def test_update_with_id_differing_from_url_is_400(client: TestClient, uid: str) -> None:
    rid = create(client, patient(uid))["id"]
    r = client.put(f"/fhir/Patient/{rid}", json=patient(uid, id=f"other-{uid}"), headers=FHIR)
    body = assert_outcome(r, 400, "invalid", ["Patient.id"])
    assert rid in body["issue"][0]["diagnostics"]
    assert client.get(f"/fhir/Patient/other-{uid}").status_code == 404
    assert client.get(f"/fhir/Patient/{rid}").headers["etag"] == 'W/"1"'


def test_bad_count_is_400(client: TestClient) -> None:
    assert_outcome(client.get("/fhir/Patient?_count=ten"), 400, "invalid", ["_count"])


def test_unsupported_modifier_is_400(client: TestClient) -> None:
    r = client.get("/fhir/Patient?name:below=x")
    assert_outcome(r, 400, "not-supported", ["name:below"])
    r = client.get("/fhir/Patient?identifier:in=x")
    assert_outcome(r, 400, "not-supported", ["identifier:in"])


def test_unknown_parameter_in_conditional_criteria_is_400(client: TestClient, uid: str) -> None:
    r = client.post(
        "/fhir/Patient",
        json=patient(uid),
        headers={**FHIR, "If-None-Exist": f"identifer=urn:sys|{uid}"},
    )
    assert_outcome(r, 400, "not-supported", ["identifer"])
    r = client.put(f"/fhir/Patient?nonsense={uid}", json=patient(uid), headers=FHIR)
    assert_outcome(r, 400, "not-supported", ["nonsense"])
    assert_outcome(
        client.delete(f"/fhir/Patient?nonsense={uid}"), 400, "not-supported", ["nonsense"]
    )
    # Nothing was created or removed by the refused requests.
    assert client.get("/fhir/Patient").json()["total"] == 0


# --- 404 ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/fhir/Foo"),
        ("GET", "/fhir/Foo/1"),
        ("GET", "/fhir/Foo/1/_history/1"),
        ("DELETE", "/fhir/Foo/1"),
        ("GET", "/fhir/patient/1"),
    ],
)
def test_unknown_resource_type_is_404(client: TestClient, method: str, path: str) -> None:
    r = client.request(method, path)
    body = assert_outcome(r, 404, "not-found")
    assert path.split("/")[2] in body["issue"][0]["diagnostics"]


def test_create_of_unknown_resource_type_is_404(client: TestClient) -> None:
    r = client.post("/fhir/Foo", json={"resourceType": "Foo"}, headers=FHIR)
    assert_outcome(r, 404, "not-found")


def test_unknown_id_is_404(client: TestClient, uid: str) -> None:
    r = client.get(f"/fhir/Patient/nobody-{uid}")
    body = assert_outcome(r, 404, "not-found")
    assert f"nobody-{uid}" in body["issue"][0]["diagnostics"]
    assert "etag" not in r.headers


def test_unknown_version_is_404(client: TestClient, uid: str) -> None:
    rid = create(client, patient(uid))["id"]
    for version in ("2", "0", "99", "abc"):
        assert_outcome(client.get(f"/fhir/Patient/{rid}/_history/{version}"), 404, "not-found")
    assert_outcome(client.get(f"/fhir/Patient/nobody-{uid}/_history/1"), 404, "not-found")


def test_lineage_of_an_unknown_version_is_404(client: TestClient, uid: str) -> None:
    rid = create(client, patient(uid))["id"]
    # Version 1 exists (written over REST, so it has no lineage): an empty list.
    r = client.get(f"/fhir/Patient/{rid}/$lineage?version=1")
    assert r.status_code == 200, r.text
    assert r.json() == {"resourceType": "Parameters", "parameter": []}
    for version in ("2", "0"):
        r = client.get(f"/fhir/Patient/{rid}/$lineage?version={version}")
        body = assert_outcome(r, 404, "not-found", ["version"])
        assert f"_history/{version}" in body["issue"][0]["diagnostics"]
    assert_outcome(client.get(f"/fhir/Patient/nobody-{uid}/$lineage"), 404, "not-found")


@pytest.mark.parametrize(
    "path",
    [
        "/fhir/Patient/1/foo/bar",
        "/fhir/Patient/1/_history/1/extra",
        "/fhir/Patient/1/foo",
        "/nowhere",
        "/fhir/Patient/1/$everything/more",
    ],
)
def test_unknown_route_is_404_operation_outcome(client: TestClient, path: str) -> None:
    body = assert_outcome(client.get(path), 404, "not-found")
    assert path.removeprefix("/fhir/") in body["issue"][0]["diagnostics"]


# --- 405 ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/fhir/Patient/123", {"resourceType": "Patient"}),
        ("DELETE", "/fhir/Patient", None),
        ("PUT", "/fhir/Patient", {"resourceType": "Patient"}),
        ("PATCH", "/fhir/Patient", [{"op": "remove", "path": "/active"}]),
        ("DELETE", "/fhir/Patient/123/_history/1", None),
        ("PUT", "/fhir/Patient/123/_history", {"resourceType": "Patient", "id": "123"}),
    ],
)
def test_method_not_allowed_is_405(client: TestClient, method: str, path: str, body: Any) -> None:
    media = JSON_PATCH if method == "PATCH" else FHIR
    r = client.request(method, path, json=body, headers=media if body is not None else {})
    body = assert_outcome(r, 405, "not-supported")
    assert method in body["issue"][0]["diagnostics"]


def test_405_on_instance_post_creates_nothing(client: TestClient) -> None:
    r = client.post(
        "/fhir/Patient/123", json={"resourceType": "Patient", "id": "123"}, headers=FHIR
    )
    assert_outcome(r, 405, "not-supported")
    assert client.get("/fhir/Patient/123").status_code == 404


# --- 410 ---------------------------------------------------------------------


def test_deleted_resource_is_410(client: TestClient, uid: str) -> None:
    rid = create(client, patient(uid))["id"]
    assert client.delete(f"/fhir/Patient/{rid}").status_code == 204
    r = client.get(f"/fhir/Patient/{rid}")
    body = assert_outcome(r, 410, "deleted")
    assert rid in body["issue"][0]["diagnostics"]
    assert r.headers["etag"] == 'W/"2"'
    r = client.get(f"/fhir/Patient/{rid}/_history/2")
    assert_outcome(r, 410, "deleted")
    ops = [{"op": "add", "path": "/active", "value": True}]
    assert_outcome(
        client.patch(f"/fhir/Patient/{rid}", json=ops, headers=JSON_PATCH), 410, "deleted"
    )


# --- 412 ---------------------------------------------------------------------


def test_stale_if_match_is_412(client: TestClient, uid: str) -> None:
    v1 = create(client, patient(uid))
    rid = v1["id"]
    r = client.put(
        f"/fhir/Patient/{rid}", json={**v1, "active": True}, headers={**FHIR, "If-Match": 'W/"1"'}
    )
    assert r.status_code == 200
    r = client.put(
        f"/fhir/Patient/{rid}", json={**v1, "active": False}, headers={**FHIR, "If-Match": 'W/"1"'}
    )
    assert_outcome(r, 412, "conflict")
    assert_outcome(
        client.delete(f"/fhir/Patient/{rid}", headers={"If-Match": 'W/"3"'}), 412, "conflict"
    )
    assert client.get(f"/fhir/Patient/{rid}").json()["active"] is True


def test_multiple_matches_is_412(client: TestClient, uid: str) -> None:
    create(client, patient(uid))
    create(client, patient(uid))
    r = client.post(
        "/fhir/Patient",
        json=patient(uid),
        headers={**FHIR, "If-None-Exist": f"identifier=urn:sys|{uid}"},
    )
    assert_outcome(r, 412, "multiple-matches")
    r = client.put(f"/fhir/Patient?identifier=urn:sys|{uid}", json=patient(uid), headers=FHIR)
    assert_outcome(r, 412, "multiple-matches")
    assert_outcome(
        client.delete(f"/fhir/Patient?identifier=urn:sys|{uid}"), 412, "multiple-matches"
    )
    assert client.get(f"/fhir/Patient?identifier=urn:sys|{uid}").json()["total"] == 2


def test_garbage_if_match_is_400(client: TestClient, uid: str) -> None:
    rid = create(client, patient(uid))["id"]
    r = client.delete(f"/fhir/Patient/{rid}", headers={"If-Match": "yesterday"})
    body = assert_outcome(r, 400, "invalid")
    assert "yesterday" in body["issue"][0]["diagnostics"]
    assert client.get(f"/fhir/Patient/{rid}").status_code == 200


# --- 413 ---------------------------------------------------------------------


@pytest.fixture()
def small_client(ctx: Context, settings: Settings) -> Iterator[TestClient]:
    small = Settings(
        database_url=settings.database_url,
        public_base_url=settings.public_base_url,
        max_body_bytes=2048,
    )
    with TestClient(create_app(small, ctx), raise_server_exceptions=False) as c:
        yield c


def _padded_patient(size: int) -> bytes:
    head = b'{"resourceType": "Patient", "name": [{"text": "'
    tail = b'"}]}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def test_body_over_the_limit_is_413(small_client: TestClient) -> None:
    fits = _padded_patient(2048)
    assert len(fits) == 2048
    assert small_client.post("/fhir/Patient", content=fits, headers=FHIR).status_code == 201
    too_big = _padded_patient(2049)
    r = small_client.post("/fhir/Patient", content=too_big, headers=FHIR)
    body = assert_outcome(r, 413, "too-costly")
    assert "2048" in body["issue"][0]["diagnostics"]
    r = small_client.put("/fhir/Patient/big", content=too_big, headers=FHIR)
    assert_outcome(r, 413, "too-costly")
    assert small_client.get("/fhir/Patient").json()["total"] == 1


def test_streamed_body_over_the_limit_is_413(small_client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        data = _padded_patient(4096)
        for i in range(0, len(data), 512):
            yield data[i : i + 512]

    r = small_client.post("/fhir/Patient", content=chunks(), headers=FHIR)
    assert "content-length" not in r.request.headers
    assert_outcome(r, 413, "too-costly")
    assert small_client.get("/fhir/Patient").json()["total"] == 0


# --- 415 ---------------------------------------------------------------------


@pytest.mark.parametrize("media", ["application/xml", "text/plain", "application/fhir+xml"])
def test_unsupported_media_type_is_415(client: TestClient, uid: str, media: str) -> None:
    raw = b'{"resourceType": "Patient"}'
    r = client.post("/fhir/Patient", content=raw, headers={"Content-Type": media})
    body = assert_outcome(r, 415, "not-supported")
    assert media in body["issue"][0]["diagnostics"]
    r = client.put("/fhir/Patient/x", content=raw, headers={"Content-Type": media})
    assert_outcome(r, 415, "not-supported")
    r = client.patch("/fhir/Patient/x", content=b"[]", headers={"Content-Type": media})
    assert_outcome(r, 415, "not-supported")
    assert client.get("/fhir/Patient").json()["total"] == 0


def test_json_media_types_with_parameters_are_accepted(client: TestClient) -> None:
    for media in (
        "application/fhir+json; charset=utf-8",
        "application/json",
        "APPLICATION/FHIR+JSON;fhirVersion=4.0",
    ):
        r = client.post(
            "/fhir/Patient", content=b'{"resourceType": "Patient"}', headers={"Content-Type": media}
        )
        assert r.status_code == 201, (media, r.text)


def test_search_post_with_json_is_415(client: TestClient) -> None:
    r = client.post(
        "/fhir/Patient/_search",
        content=b'{"identifier": "x"}',
        headers={"Content-Type": "application/json"},
    )
    assert_outcome(r, 415, "not-supported")


# --- 422 ---------------------------------------------------------------------


def test_patch_that_cannot_apply_is_422(client: TestClient, uid: str) -> None:
    rid = create(client, patient(uid, active=True))["id"]
    url = f"/fhir/Patient/{rid}"
    cases = [
        [{"op": "test", "path": "/active", "value": False}],
        [{"op": "remove", "path": "/birthDate"}],
        [{"op": "replace", "path": "/name/3/family", "value": "X"}],
    ]
    for ops in cases:
        assert_outcome(client.patch(url, json=ops, headers=JSON_PATCH), 422, "business-rule")
    ops = [{"op": "add", "path": "/gender", "value": ["female"]}]
    body = assert_outcome(
        client.patch(url, json=ops, headers=JSON_PATCH), 422, "value", ["Patient.gender"]
    )
    assert "gender" in body["issue"][0]["diagnostics"]
    ops = [{"op": "add", "path": "/name", "value": [{"given": "Peter"}]}]
    assert_outcome(
        client.patch(url, json=ops, headers=JSON_PATCH), 422, "value", ["Patient.name[0].given"]
    )
    ops = [{"op": "replace", "path": "/id", "value": "someone-else"}]
    assert_outcome(client.patch(url, json=ops, headers=JSON_PATCH), 422, "business-rule")
    assert client.get(url).headers["etag"] == 'W/"1"'


def test_malformed_patch_is_400(client: TestClient, uid: str) -> None:
    rid = create(client, patient(uid))["id"]
    r = client.patch(f"/fhir/Patient/{rid}", json={"op": "add"}, headers=JSON_PATCH)
    assert_outcome(r, 400, "invalid")
    r = client.patch(
        f"/fhir/Patient/{rid}", json=[{"op": "jump", "path": "/a"}], headers=JSON_PATCH
    )
    assert_outcome(r, 400, "invalid")
