"""history (instance, type, system): https://hl7.org/fhir/R4/http.html#history"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

from fastapi.testclient import TestClient

BASE = "http://hub.test/fhir"
SYSTEM = "http://hub.test/sid"


def _patient(uid: str, family: str = "Doe", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": SYSTEM, "value": uid}],
        "name": [{"family": family}],
        **extra,
    }


def _create(client: TestClient, resource: dict[str, Any]) -> dict[str, Any]:
    r = client.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert r.status_code == 201, r.text
    return dict(r.json())


def _update(client: TestClient, resource: dict[str, Any]) -> dict[str, Any]:
    r = client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource)
    assert r.status_code in (200, 201), r.text
    return dict(r.json())


def _history(client: TestClient, path: str, **params: str) -> dict[str, Any]:
    r = client.get(path, params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    body = r.json()
    assert body["resourceType"] == "Bundle"
    assert body["type"] == "history"
    return dict(body)


def _keys(bundle: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(type, id, version) of each entry, taken from fullUrl and the response etag."""
    out = []
    for e in bundle.get("entry", []):
        type_, id_ = e["fullUrl"].removeprefix(BASE + "/").split("/")
        version = int(e["response"]["etag"].removeprefix('W/"').rstrip('"'))
        out.append((type_, id_, version))
    return out


def _next(bundle: dict[str, Any]) -> str | None:
    for link in bundle.get("link", []):
        if link["relation"] == "next":
            url = str(link["url"])
            assert url.startswith(BASE + "/")
            return url.removeprefix("http://hub.test")
    return None


def test_instance_history_lists_every_version_newest_first(client: TestClient, uid: str) -> None:
    p = _create(client, _patient(uid, "One"))
    pid = p["id"]
    _update(client, {**p, "name": [{"family": "Two"}]})
    _update(client, {**p, "name": [{"family": "Three"}]})
    assert client.delete(f"/fhir/Patient/{pid}").status_code in (200, 204)
    other = _create(client, _patient(uid + "x"))

    bundle = _history(client, f"/fhir/Patient/{pid}/_history")

    assert bundle["total"] == 4
    assert _keys(bundle) == [("Patient", pid, v) for v in (4, 3, 2, 1)]
    assert other["id"] not in str(bundle)
    deletion, second_update, first_update, creation = bundle["entry"]

    assert "resource" not in deletion
    assert deletion["request"] == {"method": "DELETE", "url": f"Patient/{pid}"}
    assert deletion["response"]["etag"] == 'W/"4"'
    assert deletion["response"]["status"].startswith(("200", "204"))

    for entry, family, version in ((second_update, "Three", 3), (first_update, "Two", 2)):
        assert entry["fullUrl"] == f"{BASE}/Patient/{pid}"
        assert entry["request"] == {"method": "PUT", "url": f"Patient/{pid}"}
        assert entry["response"]["status"].startswith("200")
        assert entry["response"]["etag"] == f'W/"{version}"'
        assert entry["resource"]["meta"]["versionId"] == str(version)
        assert entry["resource"]["name"][0]["family"] == family
        assert entry["response"]["lastModified"] == entry["resource"]["meta"]["lastUpdated"]

    assert creation["request"] == {"method": "POST", "url": "Patient"}
    assert creation["response"]["status"] == "201 Created"
    assert creation["response"]["etag"] == 'W/"1"'
    assert creation["resource"]["name"][0]["family"] == "One"


def test_history_of_a_version_can_be_read_back(client: TestClient, uid: str) -> None:
    p = _create(client, _patient(uid, "One"))
    _update(client, {**p, "name": [{"family": "Two"}]})
    bundle = _history(client, f"/fhir/Patient/{p['id']}/_history")
    for entry in bundle["entry"]:
        version = entry["resource"]["meta"]["versionId"]
        r = client.get(f"/fhir/Patient/{p['id']}/_history/{version}")
        assert r.status_code == 200
        assert r.json() == entry["resource"]


def test_type_history_holds_only_that_type(client: TestClient, uid: str) -> None:
    a = _create(client, _patient(uid + "a"))
    obs = _create(
        client, {"resourceType": "Observation", "status": "final", "code": {"text": "weight"}}
    )
    b = _create(client, _patient(uid + "b"))
    _update(client, {**a, "active": True})

    patients = _history(client, "/fhir/Patient/_history")
    assert _keys(patients) == [
        ("Patient", a["id"], 2),
        ("Patient", b["id"], 1),
        ("Patient", a["id"], 1),
    ]
    assert patients["total"] == 3

    observations = _history(client, "/fhir/Observation/_history")
    assert _keys(observations) == [("Observation", obs["id"], 1)]

    assert _history(client, "/fhir/Encounter/_history")["total"] == 0


def test_system_history_holds_every_type_newest_first(client: TestClient, uid: str) -> None:
    a = _create(client, _patient(uid))
    obs = _create(
        client, {"resourceType": "Observation", "status": "final", "code": {"text": "weight"}}
    )
    _update(client, {**a, "active": False})
    assert client.delete(f"/fhir/Observation/{obs['id']}").status_code in (200, 204)

    bundle = _history(client, "/fhir/_history")
    assert _keys(bundle) == [
        ("Observation", obs["id"], 2),
        ("Patient", a["id"], 2),
        ("Observation", obs["id"], 1),
        ("Patient", a["id"], 1),
    ]
    assert bundle["total"] == 4
    assert bundle["entry"][0]["request"]["method"] == "DELETE"
    assert "resource" not in bundle["entry"][0]
    stamps = [e["response"]["lastModified"] for e in bundle["entry"]]
    assert stamps == sorted(stamps, reverse=True)


def test_unchanged_update_adds_no_version(client: TestClient, uid: str) -> None:
    p = _create(client, _patient(uid))
    _update(client, p)
    bundle = _history(client, f"/fhir/Patient/{p['id']}/_history")
    assert _keys(bundle) == [("Patient", p["id"], 1)]


def _since_setup(client: TestClient, uid: str) -> tuple[dict[str, Any], dict[str, Any], datetime]:
    old = _create(client, _patient(uid + "old"))
    time.sleep(0.05)
    new = _create(client, _patient(uid + "new"))
    cut = datetime.fromisoformat(new["meta"]["lastUpdated"].replace("Z", "+00:00"))
    return old, new, cut


def test_since_with_utc_instant(client: TestClient, uid: str) -> None:
    old, new, cut = _since_setup(client, uid)
    since = cut.astimezone(UTC).isoformat(timespec="milliseconds")
    since = since.replace("+00:00", "Z")
    bundle = _history(client, "/fhir/_history", _since=since)
    assert _keys(bundle) == [("Patient", new["id"], 1)]
    assert bundle["total"] == 1
    # _since is inclusive: a version stamped exactly at the instant is in.
    everything = _history(client, "/fhir/Patient/_history", _since="2000-01-01T00:00:00Z")
    assert {k[1] for k in _keys(everything)} == {old["id"], new["id"]}


def test_since_with_an_offset_is_the_same_instant(client: TestClient, uid: str) -> None:
    old, new, cut = _since_setup(client, uid)
    plus_one = cut.astimezone(timezone(timedelta(hours=1)))
    text = plus_one.isoformat(timespec="milliseconds")
    assert text.endswith("+01:00")
    # Encoded '+' (%2B) and a raw '+' that a query string turns into a space.
    encoded = _history(client, "/fhir/Patient/_history", _since=text)
    assert _keys(encoded) == [("Patient", new["id"], 1)]
    raw = client.get(f"/fhir/Patient/_history?_since={text}")
    assert raw.status_code == 200, raw.text
    assert _keys(raw.json()) == [("Patient", new["id"], 1)]
    # Thirty minutes before the cut, written in +01:00 (its wall clock is after the cut).
    earlier = (cut - timedelta(minutes=30)).astimezone(timezone(timedelta(hours=1)))
    bundle = _history(client, "/fhir/Patient/_history", _since=earlier.isoformat())
    assert {k[1] for k in _keys(bundle)} >= {new["id"]}
    # Thirty minutes after the cut in -05:00 (its wall clock is before the cut): nothing.
    later = (cut + timedelta(minutes=30)).astimezone(timezone(timedelta(hours=-5)))
    assert _history(client, "/fhir/Patient/_history", _since=later.isoformat())["total"] == 0
    assert old["id"] not in str(encoded)


def test_since_on_instance_history(client: TestClient, uid: str) -> None:
    p = _create(client, _patient(uid, "One"))
    time.sleep(0.05)
    v2 = _update(client, {**p, "name": [{"family": "Two"}]})
    bundle = _history(client, f"/fhir/Patient/{p['id']}/_history", _since=v2["meta"]["lastUpdated"])
    assert _keys(bundle) == [("Patient", p["id"], 2)]


def test_bad_since_is_400(client: TestClient) -> None:
    for value in ("yesterday", "2024-13-45T00:00:00Z", ""):
        r = client.get("/fhir/_history", params={"_since": value})
        assert r.status_code == 400, (value, r.text)
        body = r.json()
        assert body["resourceType"] == "OperationOutcome"
        assert body["issue"][0]["severity"] == "error"
        assert "_since" in body["issue"][0]["diagnostics"]


def test_unknown_history_parameter_is_400(client: TestClient, uid: str) -> None:
    p = _create(client, _patient(uid))
    for path in ("/fhir/_history", "/fhir/Patient/_history", f"/fhir/Patient/{p['id']}/_history"):
        r = client.get(path, params={"_sincee": "2020-01-01T00:00:00Z"})
        assert r.status_code == 400, (path, r.text)
        body = r.json()
        assert body["resourceType"] == "OperationOutcome"
        assert "_sincee" in body["issue"][0]["diagnostics"]


def test_bad_count_is_400(client: TestClient) -> None:
    r = client.get("/fhir/_history", params={"_count": "many"})
    assert r.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome"


def test_count_pages_see_each_version_once_while_writes_go_on(client: TestClient, uid: str) -> None:
    patients = [_create(client, _patient(f"{uid}{i}", f"F{i}")) for i in range(4)]
    for p in patients[:3]:
        _update(client, {**p, "active": True})
    assert client.delete(f"/fhir/Patient/{patients[0]['id']}").status_code in (200, 204)
    expected = _keys(_history(client, "/fhir/_history", _count="100"))
    assert len(expected) == 8

    seen: list[tuple[str, str, int]] = []
    page = _history(client, "/fhir/_history", _count="3")
    pages = 0
    while True:
        pages += 1
        assert len(page.get("entry", [])) <= 3
        seen += _keys(page)
        # New versions written between page fetches must not shift the pages.
        _create(client, _patient(f"{uid}new{pages}"))
        _update(client, {**patients[3], "name": [{"family": f"Moved{pages}"}]})
        url = _next(page)
        if url is None:
            break
        r = client.get(url)
        assert r.status_code == 200, r.text
        page = r.json()
        assert page["type"] == "history"
        assert pages < 10

    assert seen == expected
    assert len(set(seen)) == len(seen)
    assert pages == 3


def test_count_paging_keeps_since_and_type(client: TestClient, uid: str) -> None:
    _create(client, {"resourceType": "Observation", "status": "final", "code": {"text": "x"}})
    first = _create(client, _patient(uid + "first"))
    stamp = first["meta"]["lastUpdated"]
    made = [_create(client, _patient(f"{uid}{i}")) for i in range(4)]

    seen: list[tuple[str, str, int]] = []
    page = _history(client, "/fhir/Patient/_history", _count="2", _since=stamp)
    assert page["total"] == 5
    while True:
        seen += _keys(page)
        url = _next(page)
        if url is None:
            break
        assert "_since=" in url and "_count=2" in url
        page = client.get(url).json()
    assert [k[1] for k in seen] == [p["id"] for p in reversed([first, *made])]


def test_instance_history_pages(client: TestClient, uid: str) -> None:
    p = _create(client, _patient(uid, "V1"))
    for i in range(2, 6):
        _update(client, {**p, "name": [{"family": f"V{i}"}]})
    versions: list[int] = []
    page = _history(client, f"/fhir/Patient/{p['id']}/_history", _count="2")
    while True:
        versions += [k[2] for k in _keys(page)]
        url = _next(page)
        if url is None:
            break
        assert url.startswith(f"/fhir/Patient/{p['id']}/_history?")
        page = client.get(url).json()
    assert versions == [5, 4, 3, 2, 1]


def test_since_with_plus_in_next_link_round_trips(client: TestClient, uid: str) -> None:
    for i in range(3):
        _create(client, _patient(f"{uid}{i}"))
    since = quote("2000-01-01T01:00:00+01:00")
    r = client.get(f"/fhir/_history?_count=1&_since={since}")
    assert r.status_code == 200
    count = len(r.json()["entry"])
    url = _next(r.json())
    while url is not None:
        page = client.get(url)
        assert page.status_code == 200, page.text
        count += len(page.json()["entry"])
        url = _next(page.json())
    assert count == 3


def test_system_history_answers_head(client: TestClient, uid: str) -> None:
    _create(client, _patient(uid))
    r = client.head("/fhir/_history")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/fhir+json")
