"""batch and transaction: https://hl7.org/fhir/R4/http.html#transaction"""

from __future__ import annotations

import base64
import re
import uuid
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

BASE = "http://hub.test/fhir"
SYSTEM = "http://hub.test/sid"
LOCATION = re.compile(r"^Patient/([A-Za-z0-9\-.]{1,64})/_history/(\d+)$")


def _patient(uid: str, family: str = "Doe", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": SYSTEM, "value": uid}],
        "name": [{"family": family}],
        **extra,
    }


def _observation(subject: str | None = None) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "weight"},
    }
    if subject is not None:
        obs["subject"] = {"reference": subject}
    return obs


def _entry(
    method: str, url: str, resource: Any = None, full_url: str | None = None, **request: str
) -> dict[str, Any]:
    entry: dict[str, Any] = {"request": {"method": method, "url": url, **request}}
    if resource is not None:
        entry["resource"] = resource
    if full_url is not None:
        entry["fullUrl"] = full_url
    return entry


def _post(
    client: TestClient,
    kind: str,
    entries: list[dict[str, Any]],
    headers: dict[str, str] | None = None,
) -> Any:
    return client.post(
        "/fhir",
        json={"resourceType": "Bundle", "type": kind, "entry": entries},
        headers=headers or {},
    )


def _ok(
    client: TestClient,
    kind: str,
    entries: list[dict[str, Any]],
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    r = _post(client, kind, entries, headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["resourceType"] == "Bundle"
    assert body["type"] == f"{kind}-response"
    assert len(body["entry"]) == len(entries)
    return dict(body)


def _create(client: TestClient, resource: dict[str, Any]) -> dict[str, Any]:
    r = client.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert r.status_code == 201, r.text
    return dict(r.json())


def _by_identifier(client: TestClient, value: str) -> list[dict[str, Any]]:
    r = client.get("/fhir/Patient", params={"identifier": f"{SYSTEM}|{value}"})
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", [])]


def _id_of(entry: dict[str, Any]) -> str:
    match = LOCATION.match(entry["response"]["location"])
    assert match, entry
    return match.group(1)


def _system_total(client: TestClient) -> int:
    return int(client.get("/fhir/_history").json()["total"])


def _outcome_text(body: dict[str, Any]) -> str:
    assert body["resourceType"] == "OperationOutcome", body
    return " ".join(
        i.get("diagnostics", "") + " " + " ".join(i.get("expression", [])) for i in body["issue"]
    )


# --- transaction -------------------------------------------------------------------------


def test_transaction_response_has_status_location_and_etag_per_entry(
    client: TestClient, uid: str
) -> None:
    body = _ok(
        client,
        "transaction",
        [
            _entry("POST", "Patient", _patient(uid + "a"), f"urn:uuid:{uuid.uuid4()}"),
            _entry("PUT", f"Patient/t-{uid}", {**_patient(uid + "b"), "id": f"t-{uid}"}),
        ],
    )
    created, put = body["entry"]
    for entry in (created, put):
        response = entry["response"]
        assert response["status"] == "201 Created"
        assert LOCATION.match(response["location"]), response
        assert response["location"].endswith("/_history/1")
        assert response["etag"] == 'W/"1"'
        assert response["lastModified"] == entry["resource"]["meta"]["lastUpdated"]
        pid = _id_of(entry)
        assert entry["fullUrl"] == f"{BASE}/Patient/{pid}"
        assert entry["resource"]["id"] == pid
        assert client.get(f"/fhir/Patient/{pid}").json() == entry["resource"]
    assert _id_of(put) == f"t-{uid}"
    assert _by_identifier(client, uid + "a")[0]["id"] == _id_of(created)

    again = _ok(
        client,
        "transaction",
        [
            _entry("PUT", f"Patient/t-{uid}", {**_patient(uid + "b", "Changed"), "id": f"t-{uid}"}),
        ],
    )
    assert again["entry"][0]["response"]["status"] == "200 OK"
    assert again["entry"][0]["response"]["location"] == f"Patient/t-{uid}/_history/2"
    assert again["entry"][0]["response"]["etag"] == 'W/"2"'


def test_transaction_is_all_or_nothing(client: TestClient, uid: str) -> None:
    keep = _create(client, _patient(uid + "keep", "Kept"))
    before = _system_total(client)
    r = _post(
        client,
        "transaction",
        [
            _entry("POST", "Patient", _patient(uid + "a")),
            _entry("PUT", f"Patient/n-{uid}", {**_patient(uid + "b"), "id": f"n-{uid}"}),
            _entry("DELETE", f"Patient/{keep['id']}"),
            _entry("PUT", f"Patient/{keep['id']}x", {**_patient(uid), "id": f"{keep['id']}x"}),
            _entry("POST", "Patient", {"resourceType": "Patient", "birthDate": "not-a-date"}),
        ],
    )
    assert r.status_code == 400, r.text
    assert "Bundle.entry[4]" in _outcome_text(r.json())

    assert _by_identifier(client, uid + "a") == []
    assert client.get(f"/fhir/Patient/n-{uid}").status_code == 404
    assert client.get(f"/fhir/Patient/{keep['id']}x").status_code == 404
    kept = client.get(f"/fhir/Patient/{keep['id']}")
    assert kept.status_code == 200
    assert kept.json()["meta"]["versionId"] == "1"
    assert _system_total(client) == before


def test_transaction_fails_whole_on_a_late_precondition(client: TestClient, uid: str) -> None:
    keep = _create(client, _patient(uid + "keep"))
    before = _system_total(client)
    r = _post(
        client,
        "transaction",
        [
            _entry("DELETE", f"Patient/{keep['id']}"),
            _entry("POST", "Patient", _patient(uid + "new")),
            _entry("PUT", f"Patient/{keep['id']}", {**keep, "active": True}, ifMatch='W/"7"'),
        ],
    )
    # The PUT names the resource the DELETE removed: either refusal keeps everything.
    assert r.status_code in (400, 409, 412), r.text
    assert "Bundle.entry[" in _outcome_text(r.json())
    assert client.get(f"/fhir/Patient/{keep['id']}").status_code == 200
    assert _by_identifier(client, uid + "new") == []
    assert _system_total(client) == before

    other = _create(client, _patient(uid + "other"))
    r = _post(
        client,
        "transaction",
        [
            _entry("DELETE", f"Patient/{keep['id']}"),
            _entry("POST", "Patient", _patient(uid + "new")),
            _entry("PUT", f"Patient/{other['id']}", {**other, "active": True}, ifMatch='W/"7"'),
        ],
    )
    assert r.status_code == 412, r.text
    assert "Bundle.entry[2]" in _outcome_text(r.json())
    assert client.get(f"/fhir/Patient/{keep['id']}").status_code == 200
    assert client.get(f"/fhir/Patient/{other['id']}").json()["meta"]["versionId"] == "1"
    assert _by_identifier(client, uid + "new") == []


def test_transaction_entry_with_unknown_type_names_the_entry(client: TestClient, uid: str) -> None:
    r = _post(
        client,
        "transaction",
        [
            _entry("POST", "Patient", _patient(uid)),
            _entry("POST", "Patientt", _patient(uid)),
        ],
    )
    assert 400 <= r.status_code < 500
    assert "Bundle.entry[1]" in _outcome_text(r.json())
    assert _by_identifier(client, uid) == []


def test_get_listed_first_runs_after_the_posts(client: TestClient, uid: str) -> None:
    body = _ok(
        client,
        "transaction",
        [
            _entry("GET", f"Patient?identifier={SYSTEM}|{uid}"),
            _entry("POST", "Patient", _patient(uid), f"urn:uuid:{uuid.uuid4()}"),
        ],
    )
    search, created = body["entry"]
    assert search["response"]["status"] == "200 OK"
    found = search["resource"]
    assert found["resourceType"] == "Bundle" and found["type"] == "searchset"
    assert found["total"] == 1
    assert found["entry"][0]["resource"]["id"] == _id_of(created)
    assert created["response"]["status"] == "201 Created"


def test_delete_listed_last_runs_before_the_put(client: TestClient, uid: str) -> None:
    old = _create(client, _patient(uid, "Old"))
    new_id = f"new-{uid}"
    body = _ok(
        client,
        "transaction",
        [
            _entry("PUT", f"Patient/{new_id}", {**_patient(uid, "New"), "id": new_id}),
            _entry("GET", f"Patient/{new_id}"),
            _entry("DELETE", f"Patient?identifier={SYSTEM}|{uid}"),
        ],
    )
    put, read, deleted = body["entry"]
    assert put["response"]["status"] == "201 Created"
    assert read["resource"]["name"][0]["family"] == "New"
    assert deleted["response"]["status"].startswith(("200", "204"))
    # Had the DELETE run last it would have matched two patients (412) or the new one.
    assert client.get(f"/fhir/Patient/{old['id']}").status_code == 410
    assert client.get(f"/fhir/Patient/{new_id}").status_code == 200
    assert [p["id"] for p in _by_identifier(client, uid)] == [new_id]


def test_urn_uuid_references_are_rewritten(client: TestClient, uid: str) -> None:
    patient_url = f"urn:uuid:{uuid.uuid4()}"
    body = _ok(
        client,
        "transaction",
        [
            # The Observation comes first: references resolve whatever the order.
            _entry("POST", "Observation", _observation(patient_url), f"urn:uuid:{uuid.uuid4()}"),
            _entry("POST", "Patient", _patient(uid), patient_url),
        ],
    )
    obs_entry, patient_entry = body["entry"]
    pid = _id_of(patient_entry)
    assert obs_entry["resource"]["subject"]["reference"] == f"Patient/{pid}"
    obs_id = obs_entry["resource"]["id"]
    stored = client.get(f"/fhir/Observation/{obs_id}").json()
    assert stored["subject"]["reference"] == f"Patient/{pid}"
    assert "urn:uuid" not in orjson.dumps(stored).decode()
    assert obs_entry["response"]["location"] == f"Observation/{obs_id}/_history/1"


def test_urn_uuid_reference_to_put_entry(client: TestClient, uid: str) -> None:
    patient_url = f"urn:uuid:{uuid.uuid4()}"
    pid = f"p-{uid}"
    body = _ok(
        client,
        "transaction",
        [
            _entry("PUT", f"Patient/{pid}", {**_patient(uid), "id": pid}, patient_url),
            _entry("POST", "Observation", _observation(patient_url)),
        ],
    )
    assert body["entry"][1]["resource"]["subject"]["reference"] == f"Patient/{pid}"


def test_conditional_reference_resolves_to_the_one_match(client: TestClient, uid: str) -> None:
    patient = _create(client, _patient(uid))
    body = _ok(
        client,
        "transaction",
        [
            _entry("POST", "Observation", _observation(f"Patient?identifier={SYSTEM}|{uid}")),
        ],
    )
    obs_id = body["entry"][0]["resource"]["id"]
    stored = client.get(f"/fhir/Observation/{obs_id}").json()
    assert stored["subject"]["reference"] == f"Patient/{patient['id']}"


def test_conditional_reference_matching_none_or_two_is_412(client: TestClient, uid: str) -> None:
    before = _system_total(client)
    for_none = _post(
        client,
        "transaction",
        [
            _entry("POST", "Patient", _patient(uid + "x")),
            _entry("POST", "Observation", _observation(f"Patient?identifier={SYSTEM}|{uid}")),
        ],
    )
    assert for_none.status_code == 412, for_none.text
    assert "Bundle.entry[1]" in _outcome_text(for_none.json())
    assert _system_total(client) == before

    _create(client, _patient(uid, "A"))
    _create(client, _patient(uid, "B"))
    before = _system_total(client)
    for_two = _post(
        client,
        "transaction",
        [
            _entry("POST", "Observation", _observation(f"Patient?identifier={SYSTEM}|{uid}")),
        ],
    )
    assert for_two.status_code == 412, for_two.text
    assert "Bundle.entry[0]" in _outcome_text(for_two.json())
    assert _system_total(client) == before
    assert client.get("/fhir/Observation").json()["total"] == 0


def test_conditional_create_in_a_transaction(client: TestClient, uid: str) -> None:
    existing = _create(client, _patient(uid))
    patient_url = f"urn:uuid:{uuid.uuid4()}"
    body = _ok(
        client,
        "transaction",
        [
            _entry(
                "POST",
                "Patient",
                _patient(uid, "Other"),
                patient_url,
                ifNoneExist=f"identifier={SYSTEM}|{uid}",
            ),
            _entry("POST", "Observation", _observation(patient_url)),
            _entry(
                "POST",
                "Patient",
                _patient(uid + "fresh"),
                ifNoneExist=f"identifier={SYSTEM}|{uid}fresh",
            ),
        ],
    )
    matched, obs, fresh = body["entry"]
    assert matched["response"]["status"] == "200 OK"
    assert _id_of(matched) == existing["id"]
    assert matched["response"]["etag"] == 'W/"1"'
    assert obs["resource"]["subject"]["reference"] == f"Patient/{existing['id']}"
    assert fresh["response"]["status"] == "201 Created"

    found = _by_identifier(client, uid)
    assert [p["id"] for p in found] == [existing["id"]]
    assert found[0]["name"][0]["family"] == "Doe"
    assert len(_by_identifier(client, uid + "fresh")) == 1


def test_conditional_update_entry(client: TestClient, uid: str) -> None:
    existing = _create(client, _patient(uid, "Old"))
    body = _ok(
        client,
        "transaction",
        [
            # No id in the body: conditional update takes the id of the match.
            _entry("PUT", f"Patient?identifier={SYSTEM}|{uid}", _patient(uid, "New")),
            _entry("PUT", f"Patient?identifier={SYSTEM}|{uid}none", _patient(uid + "none", "Made")),
        ],
    )
    updated, created = body["entry"]
    assert updated["response"]["status"] == "200 OK"
    assert updated["response"]["location"] == f"Patient/{existing['id']}/_history/2"
    assert updated["resource"]["id"] == existing["id"]
    current = client.get(f"/fhir/Patient/{existing['id']}").json()
    assert current["name"][0]["family"] == "New"
    assert current["meta"]["versionId"] == "2"
    assert created["response"]["status"] == "201 Created"
    assert [p["id"] for p in _by_identifier(client, uid + "none")] == [_id_of(created)]

    # An id in the body must be the match's.
    r = _post(
        client,
        "transaction",
        [
            _entry("PUT", f"Patient?identifier={SYSTEM}|{uid}", {**_patient(uid), "id": "other"}),
        ],
    )
    assert r.status_code == 400, r.text
    assert "Bundle.entry[0]" in _outcome_text(r.json())
    assert client.get("/fhir/Patient/other").status_code == 404


def test_conditional_update_entry_with_two_matches_is_412(client: TestClient, uid: str) -> None:
    _create(client, _patient(uid, "A"))
    _create(client, _patient(uid, "B"))
    r = _post(
        client,
        "transaction",
        [
            _entry("POST", "Patient", _patient(uid + "x")),
            _entry("PUT", f"Patient?identifier={SYSTEM}|{uid}", _patient(uid, "C")),
        ],
    )
    assert r.status_code == 412, r.text
    assert "Bundle.entry[1]" in _outcome_text(r.json())
    assert sorted(p["name"][0]["family"] for p in _by_identifier(client, uid)) == ["A", "B"]
    assert _by_identifier(client, uid + "x") == []


def _binary_patch(operations: list[dict[str, Any]] | bytes) -> dict[str, Any]:
    raw = operations if isinstance(operations, bytes) else orjson.dumps(operations)
    return {
        "resourceType": "Binary",
        "contentType": "application/json-patch+json",
        "data": base64.b64encode(raw).decode(),
    }


def test_patch_entry_with_a_binary_json_patch(client: TestClient, uid: str) -> None:
    p = _create(client, _patient(uid))
    body = _ok(
        client,
        "transaction",
        [
            _entry(
                "PATCH",
                f"Patient/{p['id']}",
                _binary_patch(
                    [
                        {"op": "add", "path": "/active", "value": True},
                        {"op": "replace", "path": "/name/0/family", "value": "Patched"},
                    ]
                ),
            ),
        ],
    )
    entry = body["entry"][0]
    assert entry["response"]["status"] == "200 OK"
    assert entry["response"]["location"] == f"Patient/{p['id']}/_history/2"
    assert entry["response"]["etag"] == 'W/"2"'
    current = client.get(f"/fhir/Patient/{p['id']}").json()
    assert current["active"] is True
    assert current["name"][0]["family"] == "Patched"
    assert current["meta"]["versionId"] == "2"


def test_conditional_patch_entry(client: TestClient, uid: str) -> None:
    p = _create(client, _patient(uid))
    binary = _binary_patch([{"op": "add", "path": "/gender", "value": "female"}])
    # base64Binary may be wrapped: whitespace between the groups is allowed.
    data = binary["data"]
    binary["data"] = "\n".join(data[i : i + 8] for i in range(0, len(data), 8))
    _ok(
        client,
        "transaction",
        [
            _entry("PATCH", f"Patient?identifier={SYSTEM}|{uid}", binary),
        ],
    )
    assert client.get(f"/fhir/Patient/{p['id']}").json()["gender"] == "female"


def test_patch_entry_with_a_broken_binary_is_400(client: TestClient, uid: str) -> None:
    p = _create(client, _patient(uid))
    r = _post(
        client,
        "transaction",
        [
            _entry("POST", "Patient", _patient(uid + "x")),
            _entry("PATCH", f"Patient/{p['id']}", _binary_patch(b"this is not json")),
        ],
    )
    assert r.status_code == 400, r.text
    assert "Bundle.entry[1]" in _outcome_text(r.json())
    assert _by_identifier(client, uid + "x") == []


def test_two_entries_writing_one_resource_is_400(client: TestClient, uid: str) -> None:
    pid = f"twice-{uid}"
    r = _post(
        client,
        "transaction",
        [
            _entry("PUT", f"Patient/{pid}", {**_patient(uid, "A"), "id": pid}),
            _entry("PUT", f"Patient/{pid}", {**_patient(uid, "B"), "id": pid}),
        ],
    )
    assert r.status_code == 400, r.text
    assert "Bundle.entry[" in _outcome_text(r.json())
    assert client.get(f"/fhir/Patient/{pid}").status_code == 404

    p = _create(client, _patient(uid + "p"))
    r = _post(
        client,
        "transaction",
        [
            _entry("PUT", f"Patient/{p['id']}", {**p, "active": True}),
            _entry(
                "PATCH",
                f"Patient/{p['id']}",
                _binary_patch([{"op": "add", "path": "/gender", "value": "male"}]),
            ),
        ],
    )
    assert r.status_code == 400, r.text
    assert client.get(f"/fhir/Patient/{p['id']}").json()["meta"]["versionId"] == "1"


def test_prefer_return_minimal_omits_resources(client: TestClient, uid: str) -> None:
    body = _ok(
        client,
        "transaction",
        [
            _entry("POST", "Patient", _patient(uid)),
        ],
        headers={"Prefer": "return=minimal"},
    )
    entry = body["entry"][0]
    assert "resource" not in entry
    assert entry["response"]["status"] == "201 Created"
    assert entry["response"]["etag"] == 'W/"1"'
    assert len(_by_identifier(client, uid)) == 1

    batch = _ok(
        client,
        "batch",
        [
            _entry("POST", "Patient", _patient(uid + "b")),
        ],
        headers={"Prefer": "return=minimal"},
    )
    assert "resource" not in batch["entry"][0]
    assert batch["entry"][0]["response"]["status"] == "201 Created"


def test_empty_transaction_is_answered(client: TestClient) -> None:
    r = _post(client, "transaction", [])
    assert r.status_code == 200, r.text
    assert r.json()["type"] == "transaction-response"
    assert r.json().get("entry", []) == []


# --- batch -------------------------------------------------------------------------------


def test_batch_entries_succeed_or_fail_on_their_own(client: TestClient, uid: str) -> None:
    pid = f"b-{uid}"
    body = _ok(
        client,
        "batch",
        [
            _entry("POST", "Patient", _patient(uid + "a")),
            _entry("POST", "Patient", {"resourceType": "Patient", "birthDate": "not-a-date"}),
            _entry("PUT", f"Patient/{pid}", {**_patient(uid + "b"), "id": pid}),
            _entry("GET", f"Patient/missing-{uid}"),
            _entry("PUT", f"Patient/{pid}x", {**_patient(uid + "c"), "id": pid}),
        ],
    )
    statuses = [e["response"]["status"] for e in body["entry"]]
    assert statuses[0] == "201 Created"
    assert statuses[1].startswith("400")
    assert statuses[2] == "201 Created"
    assert statuses[3].startswith("404")
    assert statuses[4].startswith("400")

    bad = body["entry"][1]
    assert "resource" not in bad
    assert "Bundle.entry[1]" in _outcome_text(bad["response"]["outcome"])
    assert "Bundle.entry[3]" in _outcome_text(body["entry"][3]["response"]["outcome"])

    assert len(_by_identifier(client, uid + "a")) == 1
    assert client.get(f"/fhir/Patient/{pid}").status_code == 200
    assert _id_of(body["entry"][0]) == _by_identifier(client, uid + "a")[0]["id"]


def test_batch_patch_with_a_broken_binary_fails_only_that_entry(
    client: TestClient, uid: str
) -> None:
    p = _create(client, _patient(uid))
    body = _ok(
        client,
        "batch",
        [
            _entry("PATCH", f"Patient/{p['id']}", _binary_patch(b"{not json")),
            _entry("POST", "Patient", _patient(uid + "ok")),
        ],
    )
    assert body["entry"][0]["response"]["status"].startswith("400")
    assert body["entry"][1]["response"]["status"] == "201 Created"
    assert len(_by_identifier(client, uid + "ok")) == 1


def test_batch_entries_run_independently_in_order(client: TestClient, uid: str) -> None:
    p = _create(client, _patient(uid))
    body = _ok(
        client,
        "batch",
        [
            _entry("PUT", f"Patient/{p['id']}", {**p, "active": True}, ifMatch='W/"1"'),
            # Same precondition again: the first entry has made it stale.
            _entry("PUT", f"Patient/{p['id']}", {**p, "active": False}, ifMatch='W/"1"'),
            _entry("GET", f"Patient/{p['id']}"),
        ],
    )
    assert body["entry"][0]["response"]["status"] == "200 OK"
    assert body["entry"][1]["response"]["status"].startswith("412")
    assert body["entry"][2]["resource"]["active"] is True
    assert client.get(f"/fhir/Patient/{p['id']}").json()["meta"]["versionId"] == "2"


def test_collection_bundle_is_400(client: TestClient, uid: str) -> None:
    r = client.post(
        "/fhir",
        json={
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": _patient(uid)}],
        },
    )
    assert r.status_code == 400, r.text
    assert "collection" in _outcome_text(r.json())
    assert _by_identifier(client, uid) == []


def test_post_to_base_needs_a_bundle(client: TestClient, uid: str) -> None:
    r = client.post("/fhir", json=_patient(uid))
    assert r.status_code == 400, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert _by_identifier(client, uid) == []

    r = client.post(
        "/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": {"request": {}}}
    )
    assert r.status_code == 400, r.text
    assert r.json()["resourceType"] == "OperationOutcome"


def test_batch_entry_without_request_fails_alone(client: TestClient, uid: str) -> None:
    body = _ok(
        client,
        "batch",
        [
            {"resource": _patient(uid + "x")},
            _entry("POST", "Patient", _patient(uid)),
        ],
    )
    assert body["entry"][0]["response"]["status"].startswith("400")
    assert body["entry"][1]["response"]["status"] == "201 Created"


def test_post_entry_with_an_id_in_the_url_is_refused(client: TestClient, uid: str) -> None:
    pid = f"posted-{uid}"
    r = _post(client, "transaction", [_entry("POST", f"Patient/{pid}", _patient(uid))])
    assert r.status_code == 400, r.text
    assert "Bundle.entry[0]" in _outcome_text(r.json())
    assert _by_identifier(client, uid) == []
    body = _ok(client, "batch", [_entry("POST", f"Patient/{pid}", _patient(uid))])
    assert body["entry"][0]["response"]["status"].startswith(("400", "405"))
    # Outside a Bundle, too, POST goes to the type.
    assert client.post(f"/fhir/Patient/{pid}", json=_patient(uid)).status_code == 405
    assert client.get(f"/fhir/Patient/{pid}").status_code == 404
    assert _by_identifier(client, uid) == []


def test_reference_to_a_fullurl_no_entry_defines_is_400(client: TestClient, uid: str) -> None:
    """A `urn:uuid:`/`urn:oid:` reference means an entry of the Bundle: stored as it is, it
    would point nowhere, so the transaction is refused naming the element that holds it."""
    for dangling in (f"urn:uuid:{uuid.uuid4()}", "urn:oid:1.2.3.4.5"):
        patient = _entry("POST", "Patient", _patient(uid), f"urn:uuid:{uuid.uuid4()}")
        observation = _observation()
        observation["performer"] = [{"display": "Dr A"}, {"reference": dangling}]
        r = _post(
            client,
            "transaction",
            [patient, _entry("POST", "Observation", observation, f"urn:uuid:{uuid.uuid4()}")],
        )
        assert r.status_code == 400, r.text
        issue = r.json()["issue"][0]
        assert issue["code"] == "invalid"
        assert issue["expression"] == ["Bundle.entry[1].resource.performer[1]"]
        assert dangling in issue["diagnostics"]
        assert issue["diagnostics"].startswith("Bundle.entry[1]")
    # Nothing of the refused transactions was stored.
    assert _by_identifier(client, uid) == []
    assert client.get("/fhir/Observation").json()["total"] == 0


def test_a_stored_document_bundle_keeps_its_own_urn_uuid_references(
    client: TestClient, uid: str
) -> None:
    """References inside a Bundle the transaction stores resolve against that Bundle's entries."""
    patient_url, composition_url = f"urn:uuid:{uuid.uuid4()}", f"urn:uuid:{uuid.uuid4()}"
    document = {
        "resourceType": "Bundle",
        "type": "document",
        "identifier": {"system": "urn:doc", "value": uid},
        "entry": [
            {
                "fullUrl": composition_url,
                "resource": {
                    "resourceType": "Composition",
                    "status": "final",
                    "type": {"text": "note"},
                    "date": "2024-01-01",
                    "title": "Note",
                    "author": [{"reference": patient_url}],
                    "subject": {"reference": patient_url},
                },
            },
            {"fullUrl": patient_url, "resource": _patient(uid)},
        ],
    }
    body = _ok(client, "transaction", [_entry("POST", "Bundle", document)])
    assert body["entry"][0]["response"]["status"].startswith("201"), body
    location = body["entry"][0]["response"]["location"]
    r = client.get("/fhir/" + location[location.index("Bundle/") :])
    assert r.status_code == 200, r.text
    assert r.json()["entry"][0]["resource"]["subject"] == {"reference": patient_url}


@pytest.mark.parametrize("kind", ["transaction", "batch"])
def test_an_if_none_exist_holding_a_nul_or_no_string_is_400(
    client: TestClient, uid: str, kind: str
) -> None:
    for criteria in (f"identifier=urn:mrn|{uid}\x00", 5):
        entry = _entry("POST", "Patient", _patient(uid))
        entry["request"]["ifNoneExist"] = criteria
        r = _post(client, kind, [entry])
        if kind == "transaction":
            assert r.status_code == 400, r.text
            issue = r.json()["issue"][0]
        else:
            assert r.status_code == 200, r.text
            response = r.json()["entry"][0]["response"]
            assert response["status"].startswith("400"), response
            issue = response["outcome"]["issue"][0]
        assert "Bundle.entry[0]" in issue["diagnostics"], issue
    assert _by_identifier(client, uid) == []
