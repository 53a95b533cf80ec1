"""CRUD interactions over HTTP, per https://hl7.org/fhir/R4/http.html.

create, read, vread, update (and update-as-create), delete, patch, the
If-Match precondition, conditional create/update/delete, search by `_id` and
`identifier` with paging, and the Prefer header. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

BASE = "http://hub.test/fhir"
FHIR = {"Content-Type": "application/fhir+json"}
JSON_PATCH = {"Content-Type": "application/json-patch+json"}


# --- helpers -----------------------------------------------------------------


def patient(system: str | None, value: str, **extra: Any) -> dict[str, Any]:
    identifier: dict[str, str] = {"value": value}
    if system is not None:
        identifier["system"] = system
    return {"resourceType": "Patient", "identifier": [identifier], **extra}


def create(client: TestClient, resource: dict[str, Any]) -> dict[str, Any]:
    r = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=FHIR)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def read(client: TestClient, resource_type: str, resource_id: str) -> httpx.Response:
    return client.get(f"/fhir/{resource_type}/{resource_id}")


def history_total(client: TestClient, resource_type: str, resource_id: str) -> int:
    r = client.get(f"/fhir/{resource_type}/{resource_id}/_history")
    assert r.status_code == 200, r.text
    return int(r.json()["total"])


def search_ids(client: TestClient, query: str) -> list[str]:
    r = client.get(f"/fhir/Patient?{query}")
    assert r.status_code == 200, r.text
    bundle = r.json()
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "searchset"
    ids = [e["resource"]["id"] for e in bundle["entry"]]
    assert bundle["total"] == len(ids)
    return ids


def assert_outcome(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    body: dict[str, Any] = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == code
    assert body["issue"][0]["severity"] == "error"
    return body


def relative(url: str) -> str:
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == "http://hub.test"
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


# --- create ------------------------------------------------------------------


def test_create_assigns_id_and_answers_201_with_version_headers(
    client: TestClient, uid: str
) -> None:
    sent = patient(
        "urn:sys",
        uid,
        id="client-chosen",
        meta={"versionId": "7"},
        name=[{"family": "Chalmers", "given": ["Peter"]}],
    )
    r = client.post("/fhir/Patient", json=sent, headers=FHIR)
    assert r.status_code == 201, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    body = r.json()
    rid = body["id"]
    assert rid and rid != "client-chosen"
    assert r.headers["location"] == f"{BASE}/Patient/{rid}/_history/1"
    assert r.headers["etag"] == 'W/"1"'
    assert body["meta"]["versionId"] == "1"
    last_updated = body["meta"]["lastUpdated"]
    assert last_updated.endswith("Z")
    modified = parsedate_to_datetime(r.headers["last-modified"])
    assert modified.strftime("%Y-%m-%dT%H:%M:%S") == last_updated[:19]
    assert body["name"] == sent["name"]
    assert body["identifier"] == sent["identifier"]
    # The ignored body id created nothing.
    assert read(client, "Patient", "client-chosen").status_code == 404


def test_two_creates_get_distinct_ids(client: TestClient, uid: str) -> None:
    first = create(client, patient("urn:sys", uid))
    second = create(client, patient("urn:sys", uid))
    assert first["id"] != second["id"]
    assert sorted(search_ids(client, f"identifier=urn:sys|{uid}")) == sorted(
        [first["id"], second["id"]]
    )


def test_create_keeps_client_meta_elements_but_not_server_ones(
    client: TestClient, uid: str
) -> None:
    profile = "http://example.org/StructureDefinition/p"
    body = create(
        client,
        patient(
            None,
            uid,
            meta={
                "versionId": "42",
                "lastUpdated": "2001-01-01T00:00:00Z",
                "profile": [profile],
            },
        ),
    )
    assert body["meta"]["profile"] == [profile]
    assert body["meta"]["versionId"] == "1"
    assert not body["meta"]["lastUpdated"].startswith("2001")


# --- read and vread ----------------------------------------------------------


def test_read_returns_the_stored_bytes_and_etag(client: TestClient, uid: str) -> None:
    r = client.post("/fhir/Patient", json=patient("urn:sys", uid, active=True), headers=FHIR)
    assert r.status_code == 201
    rid = r.json()["id"]
    got = read(client, "Patient", rid)
    assert got.status_code == 200
    assert got.content == r.content
    assert got.headers["etag"] == 'W/"1"'
    assert got.headers["last-modified"] == r.headers["last-modified"]
    assert got.headers["content-type"].startswith("application/fhir+json")


def test_read_with_matching_if_none_match_is_304(client: TestClient, uid: str) -> None:
    rid = create(client, patient(None, uid))["id"]
    r = client.get(f"/fhir/Patient/{rid}", headers={"If-None-Match": 'W/"1"'})
    assert r.status_code == 304
    assert r.content == b""
    r = client.get(f"/fhir/Patient/{rid}", headers={"If-None-Match": 'W/"0"'})
    assert r.status_code == 200


def test_vread_returns_each_version(client: TestClient, uid: str) -> None:
    v1 = create(client, patient(None, uid, gender="male"))
    rid = v1["id"]
    r = client.put(f"/fhir/Patient/{rid}", json={**v1, "gender": "female"}, headers=FHIR)
    assert r.status_code == 200
    old = client.get(f"/fhir/Patient/{rid}/_history/1")
    assert old.status_code == 200
    assert old.headers["etag"] == 'W/"1"'
    assert old.json() == v1
    new = client.get(f"/fhir/Patient/{rid}/_history/2")
    assert new.status_code == 200
    assert new.headers["etag"] == 'W/"2"'
    assert new.json()["gender"] == "female"
    assert new.content == r.content


# --- update ------------------------------------------------------------------


def test_update_existing_answers_200_with_a_new_version(client: TestClient, uid: str) -> None:
    v1 = create(client, patient(None, uid, active=True))
    rid = v1["id"]
    r = client.put(f"/fhir/Patient/{rid}", json={**v1, "active": False}, headers=FHIR)
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == 'W/"2"'
    body = r.json()
    assert body["id"] == rid
    assert body["active"] is False
    assert body["meta"]["versionId"] == "2"
    assert body["meta"]["lastUpdated"] >= v1["meta"]["lastUpdated"]
    current = read(client, "Patient", rid)
    assert current.headers["etag"] == 'W/"2"'
    assert current.json()["active"] is False
    assert history_total(client, "Patient", rid) == 2


def test_update_ignores_meta_version_and_last_updated_in_body(client: TestClient, uid: str) -> None:
    v1 = create(client, patient(None, uid))
    stale = {
        **v1,
        "active": True,
        "meta": {"versionId": "99", "lastUpdated": "2001-01-01T00:00:00.000Z"},
    }
    r = client.put(f"/fhir/Patient/{v1['id']}", json=stale, headers=FHIR)
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == 'W/"2"'
    assert r.json()["meta"]["versionId"] == "2"
    assert r.json()["meta"]["lastUpdated"] >= v1["meta"]["lastUpdated"]


def test_head_read_has_headers_and_no_body(client: TestClient, uid: str) -> None:
    rid = create(client, patient(None, uid))["id"]
    r = client.head(f"/fhir/Patient/{rid}")
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["etag"] == 'W/"1"'


def test_update_as_create_with_client_id_answers_201(client: TestClient, uid: str) -> None:
    rid = f"client-{uid}"
    r = client.put(f"/fhir/Patient/{rid}", json=patient(None, uid, id=rid), headers=FHIR)
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"{BASE}/Patient/{rid}/_history/1"
    assert r.headers["etag"] == 'W/"1"'
    assert r.json()["id"] == rid
    assert r.json()["meta"]["versionId"] == "1"
    assert read(client, "Patient", rid).json() == r.json()


def test_update_with_unchanged_content_creates_no_version(client: TestClient, uid: str) -> None:
    v1 = create(client, patient("urn:sys", uid, name=[{"family": "Same"}], active=True))
    rid = v1["id"]
    without_meta = {k: v for k, v in v1.items() if k != "meta"}
    reordered = dict(reversed(list(without_meta.items())))
    for body in (v1, without_meta, reordered):
        r = client.put(f"/fhir/Patient/{rid}", json=body, headers=FHIR)
        assert r.status_code == 200, r.text
        assert r.headers["etag"] == 'W/"1"'
        assert r.json()["meta"] == v1["meta"]
    assert history_total(client, "Patient", rid) == 1
    assert client.get(f"/fhir/Patient/{rid}/_history/2").status_code == 404
    # A real change still makes a version.
    r = client.put(f"/fhir/Patient/{rid}", json={**v1, "active": False}, headers=FHIR)
    assert r.headers["etag"] == 'W/"2"'
    assert history_total(client, "Patient", rid) == 2


def test_update_as_create_then_identical_put_creates_no_version(
    client: TestClient, uid: str
) -> None:
    rid = f"same-{uid}"
    body = patient(None, uid, id=rid)
    assert client.put(f"/fhir/Patient/{rid}", json=body, headers=FHIR).status_code == 201
    r = client.put(f"/fhir/Patient/{rid}", json=body, headers=FHIR)
    assert r.status_code == 200
    assert r.headers["etag"] == 'W/"1"'
    assert history_total(client, "Patient", rid) == 1


# --- delete ------------------------------------------------------------------


def test_delete_then_read_is_gone_and_vread_keeps_old_version(client: TestClient, uid: str) -> None:
    v1 = create(client, patient("urn:sys", uid))
    rid = v1["id"]
    r = client.delete(f"/fhir/Patient/{rid}")
    assert r.status_code == 204
    assert r.content == b""
    assert r.headers["etag"] == 'W/"2"'
    gone = read(client, "Patient", rid)
    assert_outcome(gone, 410, "deleted")
    assert gone.headers["etag"] == 'W/"2"'
    old = client.get(f"/fhir/Patient/{rid}/_history/1")
    assert old.status_code == 200
    assert old.json() == v1
    assert client.get(f"/fhir/Patient/{rid}/_history/2").status_code == 410
    assert history_total(client, "Patient", rid) == 2
    assert search_ids(client, f"identifier=urn:sys|{uid}") == []
    assert search_ids(client, f"_id={rid}") == []


def test_delete_of_unknown_id_is_204(client: TestClient, uid: str) -> None:
    r = client.delete(f"/fhir/Patient/never-{uid}")
    assert r.status_code == 204
    assert r.content == b""
    assert read(client, "Patient", f"never-{uid}").status_code == 404


def test_delete_twice_makes_one_deletion(client: TestClient, uid: str) -> None:
    rid = create(client, patient(None, uid))["id"]
    assert client.delete(f"/fhir/Patient/{rid}").status_code == 204
    assert client.delete(f"/fhir/Patient/{rid}").status_code == 204
    assert history_total(client, "Patient", rid) == 2


def test_recreate_after_delete_by_put_is_201_with_next_version(
    client: TestClient, uid: str
) -> None:
    v1 = create(client, patient(None, uid))
    rid = v1["id"]
    assert client.delete(f"/fhir/Patient/{rid}").status_code == 204
    r = client.put(f"/fhir/Patient/{rid}", json=v1, headers=FHIR)
    assert r.status_code == 201, r.text
    assert r.headers["etag"] == 'W/"3"'
    assert r.headers["location"] == f"{BASE}/Patient/{rid}/_history/3"
    assert r.json()["meta"]["versionId"] == "3"
    assert read(client, "Patient", rid).status_code == 200
    assert history_total(client, "Patient", rid) == 3


# --- patch -------------------------------------------------------------------


def test_json_patch_applies_and_makes_a_version(client: TestClient, uid: str) -> None:
    rid = create(client, patient(None, uid, active=True))["id"]
    ops = [
        {"op": "test", "path": "/active", "value": True},
        {"op": "replace", "path": "/active", "value": False},
        {"op": "add", "path": "/birthDate", "value": "1974-12-25"},
    ]
    r = client.patch(f"/fhir/Patient/{rid}", json=ops, headers=JSON_PATCH)
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == 'W/"2"'
    body = r.json()
    assert body["active"] is False
    assert body["birthDate"] == "1974-12-25"
    assert body["meta"]["versionId"] == "2"
    assert read(client, "Patient", rid).json() == body


def test_json_patch_failing_test_op_is_422_and_changes_nothing(
    client: TestClient, uid: str
) -> None:
    rid = create(client, patient(None, uid, active=True))["id"]
    ops = [
        {"op": "test", "path": "/active", "value": False},
        {"op": "replace", "path": "/active", "value": False},
    ]
    r = client.patch(f"/fhir/Patient/{rid}", json=ops, headers=JSON_PATCH)
    assert_outcome(r, 422, "business-rule")
    current = read(client, "Patient", rid)
    assert current.headers["etag"] == 'W/"1"'
    assert current.json()["active"] is True


def test_json_patch_making_the_resource_invalid_is_422_with_path(
    client: TestClient, uid: str
) -> None:
    rid = create(client, patient(None, uid))["id"]
    ops = [{"op": "add", "path": "/birthDate", "value": "25/12/1974"}]
    r = client.patch(f"/fhir/Patient/{rid}", json=ops, headers=JSON_PATCH)
    body = assert_outcome(r, 422, "value")
    assert body["issue"][0]["expression"] == ["Patient.birthDate"]
    assert read(client, "Patient", rid).headers["etag"] == 'W/"1"'


@pytest.mark.parametrize(
    "ops",
    [
        [{"op": "replace", "path": "/id", "value": "other"}],
        [{"op": "replace", "path": "/resourceType", "value": "Group"}],
        [{"op": "remove", "path": "/id"}],
    ],
    ids=["change-id", "change-type", "remove-id"],
)
def test_json_patch_may_not_change_identity(
    client: TestClient, uid: str, ops: list[dict[str, Any]]
) -> None:
    rid = create(client, patient(None, uid))["id"]
    r = client.patch(f"/fhir/Patient/{rid}", json=ops, headers=JSON_PATCH)
    assert_outcome(r, 422, "business-rule")
    assert read(client, "Patient", rid).headers["etag"] == 'W/"1"'
    assert read(client, "Patient", "other").status_code == 404


@pytest.mark.parametrize(
    "ops",
    [
        {"op": "replace", "path": "/active", "value": False},
        [{"op": "frobnicate", "path": "/active"}],
        [{"op": "replace", "value": False}],
        [{"path": "/active", "value": False}],
        ["not an operation"],
    ],
    ids=["object-not-array", "unknown-op", "no-path", "no-op", "not-an-object"],
)
def test_malformed_json_patch_is_400(client: TestClient, uid: str, ops: Any) -> None:
    rid = create(client, patient(None, uid, active=True))["id"]
    r = client.patch(f"/fhir/Patient/{rid}", json=ops, headers=JSON_PATCH)
    assert_outcome(r, 400, "invalid")
    assert read(client, "Patient", rid).headers["etag"] == 'W/"1"'


def test_patch_of_unknown_is_404_and_of_deleted_is_410(client: TestClient, uid: str) -> None:
    ops = [{"op": "add", "path": "/active", "value": True}]
    r = client.patch(f"/fhir/Patient/none-{uid}", json=ops, headers=JSON_PATCH)
    assert_outcome(r, 404, "not-found")
    rid = create(client, patient(None, uid))["id"]
    assert client.delete(f"/fhir/Patient/{rid}").status_code == 204
    r = client.patch(f"/fhir/Patient/{rid}", json=ops, headers=JSON_PATCH)
    assert_outcome(r, 410, "deleted")


def test_conditional_patch_targets_the_single_match(client: TestClient, uid: str) -> None:
    rid = create(client, patient("urn:sys", uid))["id"]
    other = create(client, patient("urn:sys", f"{uid}-other"))["id"]
    ops = [{"op": "add", "path": "/active", "value": True}]
    r = client.patch(f"/fhir/Patient?identifier=urn:sys|{uid}", json=ops, headers=JSON_PATCH)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == rid
    assert read(client, "Patient", other).json().get("active") is None
    create(client, patient("urn:sys", uid))
    r = client.patch(f"/fhir/Patient?identifier=urn:sys|{uid}", json=ops, headers=JSON_PATCH)
    assert_outcome(r, 412, "multiple-matches")


# --- If-Match ----------------------------------------------------------------


def _update(client: TestClient, resource: dict[str, Any], if_match: str) -> httpx.Response:
    rid = resource["id"]
    return client.put(
        f"/fhir/Patient/{rid}",
        json={**resource, "gender": "other"},
        headers={**FHIR, "If-Match": if_match},
    )


def _patch(client: TestClient, resource: dict[str, Any], if_match: str) -> httpx.Response:
    ops = [{"op": "add", "path": "/gender", "value": "other"}]
    return client.patch(
        f"/fhir/Patient/{resource['id']}", json=ops, headers={**JSON_PATCH, "If-Match": if_match}
    )


def _delete(client: TestClient, resource: dict[str, Any], if_match: str) -> httpx.Response:
    return client.delete(f"/fhir/Patient/{resource['id']}", headers={"If-Match": if_match})


WRITES = pytest.mark.parametrize(
    "write", [_update, _patch, _delete], ids=["update", "patch", "delete"]
)


@WRITES
def test_if_match_with_current_version_succeeds(client: TestClient, uid: str, write: Any) -> None:
    v1 = create(client, patient(None, uid))
    r = write(client, v1, 'W/"1"')
    assert r.status_code in (200, 204), r.text
    assert r.headers["etag"] == 'W/"2"'
    assert history_total(client, "Patient", v1["id"]) == 2


@WRITES
def test_if_match_with_stale_version_is_412(client: TestClient, uid: str, write: Any) -> None:
    v1 = create(client, patient(None, uid))
    r = client.put(f"/fhir/Patient/{v1['id']}", json={**v1, "active": True}, headers=FHIR)
    assert r.headers["etag"] == 'W/"2"'
    r = write(client, v1, 'W/"1"')
    body = assert_outcome(r, 412, "conflict")
    assert "2" in body["issue"][0]["diagnostics"]
    current = read(client, "Patient", v1["id"])
    assert current.status_code == 200
    assert current.headers["etag"] == 'W/"2"'
    assert "gender" not in current.json()


@WRITES
def test_garbage_if_match_is_400(client: TestClient, uid: str, write: Any) -> None:
    v1 = create(client, patient(None, uid))
    for garbage in ("banana", 'W/"one"', '"*"'):
        r = write(client, v1, garbage)
        assert_outcome(r, 400, "invalid")
    assert read(client, "Patient", v1["id"]).headers["etag"] == 'W/"1"'


def test_if_match_on_update_of_missing_resource_is_412(client: TestClient, uid: str) -> None:
    rid = f"missing-{uid}"
    r = client.put(
        f"/fhir/Patient/{rid}",
        json=patient(None, uid, id=rid),
        headers={**FHIR, "If-Match": 'W/"1"'},
    )
    assert_outcome(r, 412, "conflict")
    assert read(client, "Patient", rid).status_code == 404


# --- conditional create ------------------------------------------------------


def test_conditional_create(client: TestClient, uid: str) -> None:
    criteria = {"If-None-Exist": f"identifier=urn:sys|{uid}"}
    r = client.post(
        "/fhir/Patient", json=patient("urn:sys", uid, active=True), headers={**FHIR, **criteria}
    )
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    assert r.headers["location"] == f"{BASE}/Patient/{rid}/_history/1"

    # One match: the POST is ignored and the existing resource is returned.
    again = client.post(
        "/fhir/Patient", json=patient("urn:sys", uid, active=False), headers={**FHIR, **criteria}
    )
    assert again.status_code == 200, again.text
    assert again.json()["id"] == rid
    assert again.json()["active"] is True
    assert again.headers["etag"] == 'W/"1"'
    assert search_ids(client, f"identifier=urn:sys|{uid}") == [rid]
    assert history_total(client, "Patient", rid) == 1

    # Two matches: 412.
    create(client, patient("urn:sys", uid))
    r = client.post("/fhir/Patient", json=patient("urn:sys", uid), headers={**FHIR, **criteria})
    assert_outcome(r, 412, "multiple-matches")
    assert len(search_ids(client, f"identifier=urn:sys|{uid}")) == 2


def test_conditional_create_by_id(client: TestClient, uid: str) -> None:
    rid = create(client, patient(None, uid))["id"]
    r = client.post(
        "/fhir/Patient",
        json=patient(None, f"{uid}-2"),
        headers={**FHIR, "If-None-Exist": f"_id={rid}"},
    )
    assert r.status_code == 200
    assert r.json()["id"] == rid
    r = client.post(
        "/fhir/Patient",
        json=patient(None, f"{uid}-2"),
        headers={**FHIR, "If-None-Exist": f"_id=nope-{uid}"},
    )
    assert r.status_code == 201
    assert r.json()["id"] != rid


def test_conditional_create_ignores_deleted_matches(client: TestClient, uid: str) -> None:
    rid = create(client, patient("urn:sys", uid))["id"]
    assert client.delete(f"/fhir/Patient/{rid}").status_code == 204
    r = client.post(
        "/fhir/Patient",
        json=patient("urn:sys", uid),
        headers={**FHIR, "If-None-Exist": f"identifier=urn:sys|{uid}"},
    )
    assert r.status_code == 201
    assert r.json()["id"] != rid


# --- conditional update ------------------------------------------------------


def test_conditional_update_without_match_creates(client: TestClient, uid: str) -> None:
    r = client.put(
        f"/fhir/Patient?identifier=urn:sys|{uid}", json=patient("urn:sys", uid), headers=FHIR
    )
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    assert r.headers["location"] == f"{BASE}/Patient/{rid}/_history/1"
    assert search_ids(client, f"identifier=urn:sys|{uid}") == [rid]


def test_conditional_update_without_match_with_body_id_creates_that_id(
    client: TestClient, uid: str
) -> None:
    rid = f"cu-{uid}"
    r = client.put(
        f"/fhir/Patient?identifier=urn:sys|{uid}",
        json=patient("urn:sys", uid, id=rid),
        headers=FHIR,
    )
    assert r.status_code == 201, r.text
    assert r.json()["id"] == rid
    assert read(client, "Patient", rid).status_code == 200


def test_conditional_update_with_one_match_updates_it(client: TestClient, uid: str) -> None:
    rid = create(client, patient("urn:sys", uid))["id"]
    other = create(client, patient("urn:sys", f"{uid}-x"))["id"]
    r = client.put(
        f"/fhir/Patient?identifier=urn:sys|{uid}",
        json=patient("urn:sys", uid, active=True),
        headers=FHIR,
    )
    assert r.status_code == 200, r.text
    assert r.json()["id"] == rid
    assert r.headers["etag"] == 'W/"2"'
    assert read(client, "Patient", rid).json()["active"] is True
    assert read(client, "Patient", other).headers["etag"] == 'W/"1"'
    # The body may carry the matched resource's own id.
    r = client.put(
        f"/fhir/Patient?identifier=urn:sys|{uid}",
        json=patient("urn:sys", uid, id=rid, active=False),
        headers=FHIR,
    )
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == 'W/"3"'
    assert len(search_ids(client, "identifier=urn:sys|")) == 2


def test_conditional_update_with_mismatched_body_id_is_400(client: TestClient, uid: str) -> None:
    rid = create(client, patient("urn:sys", uid))["id"]
    r = client.put(
        f"/fhir/Patient?identifier=urn:sys|{uid}",
        json=patient("urn:sys", uid, id=f"other-{uid}"),
        headers=FHIR,
    )
    body = assert_outcome(r, 400, "invalid")
    assert body["issue"][0]["expression"] == ["Patient.id"]
    assert read(client, "Patient", rid).headers["etag"] == 'W/"1"'
    assert read(client, "Patient", f"other-{uid}").status_code == 404


def test_conditional_update_with_two_matches_is_412(client: TestClient, uid: str) -> None:
    first = create(client, patient("urn:sys", uid))["id"]
    second = create(client, patient("urn:sys", uid))["id"]
    r = client.put(
        f"/fhir/Patient?identifier=urn:sys|{uid}",
        json=patient("urn:sys", uid, active=True),
        headers=FHIR,
    )
    assert_outcome(r, 412, "multiple-matches")
    for rid in (first, second):
        assert read(client, "Patient", rid).headers["etag"] == 'W/"1"'


def test_conditional_update_by_id(client: TestClient, uid: str) -> None:
    rid = create(client, patient(None, uid))["id"]
    r = client.put(f"/fhir/Patient?_id={rid}", json=patient(None, uid, active=True), headers=FHIR)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == rid
    assert r.headers["etag"] == 'W/"2"'


# --- conditional delete ------------------------------------------------------


def test_conditional_delete(client: TestClient, uid: str) -> None:
    r = client.delete(f"/fhir/Patient?identifier=urn:sys|{uid}")
    assert r.status_code == 204

    keep = create(client, patient("urn:sys", f"{uid}-keep"))["id"]
    rid = create(client, patient("urn:sys", uid))["id"]
    r = client.delete(f"/fhir/Patient?identifier=urn:sys|{uid}")
    assert r.status_code == 204
    assert read(client, "Patient", rid).status_code == 410
    assert read(client, "Patient", keep).status_code == 200

    first = create(client, patient("urn:sys", uid))["id"]
    second = create(client, patient("urn:sys", uid))["id"]
    r = client.delete(f"/fhir/Patient?identifier=urn:sys|{uid}")
    assert_outcome(r, 412, "multiple-matches")
    assert read(client, "Patient", first).status_code == 200
    assert read(client, "Patient", second).status_code == 200


def test_conditional_delete_by_id(client: TestClient, uid: str) -> None:
    rid = create(client, patient(None, uid))["id"]
    other = create(client, patient(None, uid))["id"]
    assert client.delete(f"/fhir/Patient?_id={rid}").status_code == 204
    assert read(client, "Patient", rid).status_code == 410
    assert read(client, "Patient", other).status_code == 200
    r = client.delete(f"/fhir/Patient?_id={rid},{other}")
    assert r.status_code == 204  # only `other` is left to match
    assert read(client, "Patient", other).status_code == 410


# --- search ------------------------------------------------------------------


def test_search_by_id(client: TestClient, uid: str) -> None:
    a = create(client, patient(None, uid))["id"]
    b = create(client, patient(None, uid))["id"]
    c = create(client, patient(None, uid))["id"]
    assert search_ids(client, f"_id={a}") == [a]
    assert sorted(search_ids(client, f"_id={a},{c}")) == sorted([a, c])
    assert search_ids(client, f"_id=none-{uid}") == []
    assert search_ids(client, f"_id={a},{b}&_id={b},{c}") == [b]


def test_search_by_identifier_token_forms(client: TestClient, uid: str) -> None:
    s1, s2 = f"urn:one:{uid}", f"urn:two:{uid}"
    value = f"{uid}-v"
    p1 = create(client, patient(s1, value))["id"]
    p2 = create(client, patient(s2, value))["id"]
    p3 = create(client, patient(None, value))["id"]
    p4 = create(client, patient(s1, f"{uid}-w"))["id"]

    def found(query: str) -> list[str]:
        return sorted(search_ids(client, query))

    assert found(f"identifier={s1}|{value}") == [p1]
    assert found(f"identifier=|{value}") == [p3]
    assert found(f"identifier={s1}|") == sorted([p1, p4])
    assert found(f"identifier={value}") == sorted([p1, p2, p3])
    assert found(f"identifier={s1}|{value},{s2}|{value}") == sorted([p1, p2])
    assert found(f"identifier={s2}|{uid}-w") == []
    # Several parameters are ANDed.
    assert found(f"identifier={value}&_id={p2},{p4}") == [p2]
    # POST _search takes the same criteria as a form.
    r = client.post("/fhir/Patient/_search", data={"identifier": f"{s1}|"})
    assert r.status_code == 200
    assert sorted(e["resource"]["id"] for e in r.json()["entry"]) == sorted([p1, p4])


def test_search_entries_carry_full_url_and_stored_resource(client: TestClient, uid: str) -> None:
    created = create(client, patient("urn:sys", uid))
    r = client.get(f"/fhir/Patient?identifier=urn:sys|{uid}")
    entry = r.json()["entry"][0]
    assert entry["fullUrl"] == f"{BASE}/Patient/{created['id']}"
    assert entry["resource"] == created
    assert entry["search"]["mode"] == "match"


def test_search_paging_walks_next_links_without_repeats(client: TestClient, uid: str) -> None:
    system = f"urn:page:{uid}"
    expected = {create(client, patient(system, f"{uid}-{i}"))["id"] for i in range(7)}
    create(client, patient("urn:elsewhere", uid))  # not matching
    url: str | None = f"/fhir/Patient?identifier={system}|&_count=3"
    seen: list[str] = []
    sizes = []
    while url is not None:
        r = client.get(url)
        assert r.status_code == 200, r.text
        bundle = r.json()
        # The total comes with the first page only; later pages omit it unless _total asks.
        if sizes:
            assert "total" not in bundle
        else:
            assert bundle["total"] == 7
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        assert "self" in links
        page = [e["resource"]["id"] for e in bundle["entry"]]
        sizes.append(len(page))
        seen += page
        if "next" in links:
            assert "_cursor=" in links["next"]
        url = relative(links["next"]) if "next" in links else None
        assert len(sizes) <= 4, "paging does not end"
    assert sizes == [3, 3, 1]
    assert len(seen) == len(set(seen))
    assert set(seen) == expected


def test_search_count_equal_to_matches_has_no_next_link(client: TestClient, uid: str) -> None:
    for i in range(2):
        create(client, patient("urn:sys", f"{uid}-{i}"))
    r = client.get("/fhir/Patient?identifier=urn:sys|&_count=2")
    bundle = r.json()
    assert len(bundle["entry"]) == 2
    assert [link["relation"] for link in bundle["link"]] == ["self"]


def test_search_count_zero_answers_only_the_total(client: TestClient, uid: str) -> None:
    # R4 search.html#count: _count=0 is treated as _summary=count (total, no entries or next).
    for i in range(3):
        create(client, patient("urn:sys", f"{uid}-{i}"))
    r = client.get("/fhir/Patient?identifier=urn:sys|&_count=0")
    assert r.status_code == 200, r.text
    bundle = r.json()
    assert bundle["total"] == 3
    assert bundle.get("entry", []) == []
    assert [link["relation"] for link in bundle["link"]] == ["self"]


@pytest.mark.parametrize("name", ["nonsense", "identifer", "familly"])
def test_unknown_search_parameter_is_400_naming_it(client: TestClient, name: str) -> None:
    r = client.get(f"/fhir/Patient?{name}=x")
    body = assert_outcome(r, 400, "not-supported")
    issue = body["issue"][0]
    assert f"'{name}'" in issue["diagnostics"]
    assert issue["expression"] == [name]


# --- Prefer ------------------------------------------------------------------


def test_prefer_return_minimal(client: TestClient, uid: str) -> None:
    minimal = {**FHIR, "Prefer": "return=minimal"}
    r = client.post("/fhir/Patient", json=patient(None, uid), headers=minimal)
    assert r.status_code == 201
    assert r.content == b""
    rid = urlsplit(r.headers["location"]).path.split("/")[3]
    assert r.headers["location"] == f"{BASE}/Patient/{rid}/_history/1"
    assert r.headers["etag"] == 'W/"1"'
    assert "last-modified" in r.headers
    current = read(client, "Patient", rid).json()

    r = client.put(f"/fhir/Patient/{rid}", json={**current, "active": True}, headers=minimal)
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["etag"] == 'W/"2"'

    ops = [{"op": "replace", "path": "/active", "value": False}]
    r = client.patch(
        f"/fhir/Patient/{rid}", json=ops, headers={**JSON_PATCH, "Prefer": "return=minimal"}
    )
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["etag"] == 'W/"3"'
    assert read(client, "Patient", rid).json()["active"] is False


def test_prefer_return_representation(client: TestClient, uid: str) -> None:
    headers = {**FHIR, "Prefer": "return=representation"}
    r = client.post("/fhir/Patient", json=patient(None, uid), headers=headers)
    assert r.status_code == 201
    body = r.json()
    assert body["resourceType"] == "Patient"
    assert body["meta"]["versionId"] == "1"
    assert read(client, "Patient", body["id"]).content == r.content


def test_prefer_return_operation_outcome(client: TestClient, uid: str) -> None:
    headers = {**FHIR, "Prefer": "return=OperationOutcome"}
    r = client.post("/fhir/Patient", json=patient(None, uid), headers=headers)
    assert r.status_code == 201
    assert r.headers["etag"] == 'W/"1"'
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["severity"] == "information"
    rid = urlsplit(r.headers["location"]).path.split("/")[3]
    assert rid in body["issue"][0]["diagnostics"]

    r = client.delete(f"/fhir/Patient/{rid}", headers={"Prefer": "return=OperationOutcome"})
    assert r.status_code == 200
    assert r.json()["resourceType"] == "OperationOutcome"
    assert r.json()["issue"][0]["severity"] == "information"
    assert read(client, "Patient", rid).status_code == 410


def test_prefer_does_not_change_reads(client: TestClient, uid: str) -> None:
    rid = create(client, patient(None, uid))["id"]
    r = client.get(f"/fhir/Patient/{rid}", headers={"Prefer": "return=minimal"})
    assert r.status_code == 200
    assert r.json()["id"] == rid


# --- several resource types --------------------------------------------------


MINIMAL_RESOURCES: list[dict[str, Any]] = [
    {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "valueQuantity": {"value": 72, "unit": "/min"},
    },
    {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
    },
    {
        "resourceType": "Condition",
        "subject": {"reference": "Patient/example"},
        "code": {"text": "Headache"},
    },
    {"resourceType": "MedicinalProduct", "name": [{"productName": "Aspirin 100 mg"}]},
    {"resourceType": "Organization", "name": "Acme"},
]


@pytest.mark.parametrize("resource", MINIMAL_RESOURCES, ids=lambda r: r["resourceType"])
def test_minimal_valid_resources_of_several_types_round_trip(
    client: TestClient, resource: dict[str, Any]
) -> None:
    kind = resource["resourceType"]
    # The Condition's subject.
    client.put("/fhir/Patient/example", json={"resourceType": "Patient", "id": "example"})
    r = client.post(f"/fhir/{kind}", json=resource, headers=FHIR)
    assert r.status_code == 201, r.text
    body = r.json()
    assert {k: v for k, v in body.items() if k not in ("id", "meta")} == resource
    got = read(client, kind, body["id"])
    assert got.status_code == 200
    assert got.content == r.content
    r = client.put(f"/fhir/{kind}/{body['id']}", json=body, headers=FHIR)
    assert r.status_code == 200
    assert r.headers["etag"] == 'W/"1"'
    assert client.delete(f"/fhir/{kind}/{body['id']}").status_code == 204
    assert read(client, kind, body["id"]).status_code == 410
