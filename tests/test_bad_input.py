"""Bad input on the REST API: deep resources, control characters, media types.

Each is refused with a 4xx OperationOutcome naming what is wrong, or accepted
and stored, never a 500, and the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import io
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from ingest_fixtures import PATIENT_COLUMNS, csv_bytes, patient_row, rid
from test_errors import FHIR, JSON_PATCH, assert_outcome, create, patient

from hub.api import build_context, create_app
from hub.ingest.service import IngestService
from hub.interactions.context import Context
from hub.settings import Settings
from hub.store import SqlRepository

DEFAULT_MAX_DEPTH = 200  # of HUB_MAX_RESOURCE_DEPTH (test_fhir_content checks it)


def nested_extensions(levels: int) -> dict[str, Any]:
    """A Patient whose extension holds an extension ... `levels` deep."""
    extension: dict[str, Any] = {"url": "http://hub.test/e", "valueString": "leaf"}
    for _ in range(levels - 1):
        extension = {"url": "http://hub.test/e", "extension": [extension]}
    return {"resourceType": "Patient", "extension": [extension]}


def nested_items(levels: int) -> dict[str, Any]:
    """A Questionnaire whose items nest `levels` deep (the innermost `linkId` one step more)."""
    item: dict[str, Any] = {"linkId": "leaf", "type": "string"}
    for i in range(levels - 1):
        item = {"linkId": f"g{i}", "type": "group", "item": [item]}
    return {"resourceType": "Questionnaire", "status": "active", "item": [item]}


# --- depth -------------------------------------------------------------------


@pytest.fixture()
def default_recursion_limit() -> Iterator[None]:
    """The interpreter's recursion limit as a new process has it: an earlier deep validation
    in this process may have raised it."""
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    yield
    sys.setrecursionlimit(max(before, sys.getrecursionlimit()))


@pytest.mark.parametrize(
    "resource",
    [nested_extensions(123), nested_items(150), nested_items(DEFAULT_MAX_DEPTH - 1)],
    ids=["extensions-123", "items-150", "items-at-the-limit"],
)
@pytest.mark.usefixtures("default_recursion_limit")
def test_deep_resources_within_the_limit_are_stored(
    client: TestClient, resource: dict[str, Any]
) -> None:
    kind = resource["resourceType"]
    r = client.post(f"/fhir/{kind}", json=resource, headers=FHIR)
    assert r.status_code == 201, r.text[:500]
    stored = r.json()
    rid = stored["id"]
    read = client.get(f"/fhir/{kind}/{rid}")
    assert read.status_code == 200
    assert {k: v for k, v in read.json().items() if k not in ("id", "meta")} == resource
    # Updated, searched with _summary (parsed and serialised again) and patched, as deep.
    r = client.put(f"/fhir/{kind}/{rid}", json={**stored, "language": "en"}, headers=FHIR)
    assert r.status_code == 200, r.text[:500]
    assert r.headers["etag"] == 'W/"2"'
    r = client.get(f"/fhir/{kind}?_id={rid}&_summary=data")
    assert r.status_code == 200, r.text[:500]
    assert r.json()["entry"][0]["resource"]["language"] == "en"
    ops = [{"op": "replace", "path": "/language", "value": "de"}]
    r = client.patch(f"/fhir/{kind}/{rid}", json=ops, headers=JSON_PATCH)
    assert r.status_code == 200, r.text[:500]
    assert client.get(f"/fhir/{kind}/{rid}").json()["language"] == "de"


@pytest.mark.parametrize(
    ("resource", "deepest"),
    [
        (nested_items(DEFAULT_MAX_DEPTH), "Questionnaire" + ".item[0]" * DEFAULT_MAX_DEPTH),
        (nested_extensions(400), "Patient" + ".extension[0]" * DEFAULT_MAX_DEPTH),
    ],
    ids=["one-step-too-deep", "far-too-deep"],
)
def test_resources_deeper_than_the_limit_are_400(
    client: TestClient, resource: dict[str, Any], deepest: str
) -> None:
    kind = resource["resourceType"]
    r = client.post(f"/fhir/{kind}", json=resource, headers=FHIR)
    body = assert_outcome(r, 400, "too-costly")
    (path,) = body["issue"][0]["expression"]
    # The path names the first element beyond the limit.
    assert path.startswith(deepest + ".")
    assert path.count(".") == DEFAULT_MAX_DEPTH + 1
    assert str(DEFAULT_MAX_DEPTH) in body["issue"][0]["diagnostics"]
    assert client.get(f"/fhir/{kind}").json()["total"] == 0


@pytest.mark.usefixtures("default_recursion_limit")
def test_patches_adding_deep_values(client: TestClient, uid: str) -> None:
    """jsonpatch copies values recursively: deep ones are applied where there is room, and
    one deeper than any resource may be is refused first (422: the result would be invalid)."""
    rid = create(client, patient(uid))["id"]
    url = f"/fhir/Patient/{rid}"
    ops = [{"op": "add", "path": "/extension", "value": nested_extensions(300)["extension"]}]
    body = assert_outcome(client.patch(url, json=ops, headers=JSON_PATCH), 422, "too-costly")
    assert str(DEFAULT_MAX_DEPTH) in body["issue"][0]["diagnostics"]
    ops = [{"op": "add", "path": "/extension", "value": nested_extensions(150)["extension"]}]
    r = client.patch(url, json=ops, headers=JSON_PATCH)
    assert r.status_code == 200, r.text[:300]
    assert r.json()["extension"] == ops[0]["value"]
    assert client.get(url).headers["etag"] == 'W/"2"'


@pytest.fixture()
def shallow_client(repo: SqlRepository, settings: Settings) -> Iterator[TestClient]:
    shallow = Settings(
        database_url=settings.database_url,
        public_base_url=settings.public_base_url,
        max_resource_depth=20,
    )
    ctx = build_context(shallow, repo)
    with TestClient(create_app(shallow, ctx), raise_server_exceptions=False) as c:
        yield c


def test_the_depth_limit_is_a_setting_applied_to_every_write(
    shallow_client: TestClient, uid: str
) -> None:
    c = shallow_client
    assert c.post("/fhir/Questionnaire", json=nested_items(19), headers=FHIR).status_code == 201
    assert_outcome(
        c.post("/fhir/Questionnaire", json=nested_items(20), headers=FHIR), 400, "too-costly"
    )
    rid = create(c, patient(uid))["id"]
    deep = {**nested_extensions(20), "id": rid}
    assert_outcome(c.put(f"/fhir/Patient/{rid}", json=deep, headers=FHIR), 400, "too-costly")
    ops = [{"op": "add", "path": "/extension", "value": deep["extension"]}]
    r = c.patch(f"/fhir/Patient/{rid}", json=ops, headers=JSON_PATCH)
    assert r.status_code == 422, r.text[:300]
    assert r.json()["issue"][0]["code"] == "too-costly"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"request": {"method": "POST", "url": "Patient"}, "resource": patient(uid)},
            {"request": {"method": "POST", "url": "Questionnaire"}, "resource": nested_items(20)},
        ],
    }
    body = assert_outcome(c.post("/fhir", json=bundle, headers=FHIR), 400, "too-costly")
    assert body["issue"][0]["expression"][0].startswith("Bundle.entry[1].resource.item[0].item")
    assert c.get(f"/fhir/Patient/{rid}").headers["etag"] == 'W/"1"'


# --- control characters ------------------------------------------------------


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x0b", "\x1f"], ids=["NUL", "SOH", "VT", "US"])
def test_strings_with_control_characters_are_400_naming_the_element(
    client: TestClient, uid: str, char: str
) -> None:
    resource = patient(uid, name=[{"family": "Smith"}, {"family": f"Sm{char}ith"}])
    r = client.post("/fhir/Patient", json=resource, headers=FHIR)
    body = assert_outcome(r, 400, "value", ["Patient.name[1].family"])
    assert f"U+{ord(char):04X}" in body["issue"][0]["diagnostics"]
    r = client.put("/fhir/Patient/cc1", json={**resource, "id": "cc1"}, headers=FHIR)
    assert_outcome(r, 400, "value", ["Patient.name[1].family"])
    # A type without an R4B model is stored as sent, so it is checked too.
    product = {"resourceType": "MedicinalProduct", "identifier": [{"value": f"x{char}"}]}
    r = client.post("/fhir/MedicinalProduct", json=product, headers=FHIR)
    assert_outcome(r, 400, "value", ["MedicinalProduct.identifier[0].value"])
    # So are element names.
    r = client.post("/fhir/Patient", json={"resourceType": "Patient", f"x{char}": 1}, headers=FHIR)
    assert r.status_code == 400, r.text
    assert client.get("/fhir/Patient").json()["total"] == 0


def test_tab_cr_and_lf_are_allowed(client: TestClient, uid: str) -> None:
    text = "line 1\r\nline 2\ttabbed"
    created = create(client, patient(uid, name=[{"text": text}]))
    assert client.get(f"/fhir/Patient/{created['id']}").json()["name"][0]["text"] == text


@pytest.mark.parametrize("char", ["\x00", "\x01"], ids=["NUL", "SOH"])
def test_a_feed_row_with_a_control_character_is_rejected_naming_the_element(
    ctx: Context, settings: Settings, char: str
) -> None:
    """Feeds validate through the same function: the row fails at once, with the element,
    instead of failing at the store (PostgreSQL) attempt after attempt."""
    service = IngestService(ctx, settings, dispatcher="inline")
    try:
        rows = [patient_row("p-good"), patient_row("p-bad", LAST=f"Kuhl{char}man")]
        data = csv_bytes(PATIENT_COLUMNS, rows)
        summary = service.ingest("csv", "synthea-patients", io.BytesIO(data), "patients.csv")
    finally:
        service.close()
    assert (summary.done, summary.rejected, summary.dead) == (1, 1, 0)
    (error,) = summary.errors
    assert error.startswith("patients.csv line 3: Patient.name[0].family: ")
    assert f"U+{ord(char):04X}" in error
    assert ctx.repo.read("Patient", rid("Patient", "p-bad")) is None


def test_control_characters_in_a_transaction_name_the_entry(client: TestClient, uid: str) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"request": {"method": "POST", "url": "Patient"}, "resource": patient(uid)},
            {
                "request": {"method": "POST", "url": "Patient"},
                "resource": patient(uid, name=[{"given": ["A", "B\x00"]}]),
            },
        ],
    }
    r = client.post("/fhir", json=bundle, headers=FHIR)
    assert_outcome(r, 400, "value", ["Bundle.entry[1].resource.name[0].given[1]"])
    assert client.get("/fhir/Patient").json()["total"] == 0


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("name=a%00b", "name"),
        ("identifier=urn:sys|x%00", "identifier"),
        ("_id=a%00", "_id"),
        ("general-practitioner=Practitioner/%00", "general-practitioner"),
        ("name:contains=%01", "name:contains"),
    ],
)
def test_search_parameters_with_control_characters_are_400(
    client: TestClient, query: str, name: str
) -> None:
    assert_outcome(client.get(f"/fhir/Patient?{query}"), 400, "invalid", [name])
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    r = client.post("/fhir/Patient/_search", content=query.encode(), headers=form)
    assert_outcome(r, 400, "invalid", [name])
    # Conditional interactions search the same way.
    assert_outcome(client.delete(f"/fhir/Patient?{query}"), 400, "invalid", [name])
    r = client.post("/fhir/Patient", json=patient("x"), headers={**FHIR, "If-None-Exist": query})
    assert_outcome(r, 400, "invalid", [name])
    assert client.get("/fhir/Patient").json()["total"] == 0


def test_ids_with_control_characters_are_400(client: TestClient) -> None:
    for method in ("GET", "DELETE"):
        r = client.request(method, "/fhir/Patient/a%00b")
        body = assert_outcome(r, 400, "invalid")
        assert "a\\u0000b" in body["issue"][0]["diagnostics"]
    assert_outcome(client.get("/fhir/Patient/a%00b/_history"), 400, "invalid")


# --- media types -------------------------------------------------------------


@pytest.mark.parametrize(
    "accept",
    [
        "application/fhir+xml",
        "application/xml, text/xml",
        "application/fhir+json;q=0, application/fhir+xml",
        "text/html",
    ],
)
def test_accept_without_json_is_406_everywhere(client: TestClient, uid: str, accept: str) -> None:
    rid = create(client, patient(uid))["id"]
    wants = {"Accept": accept}
    for path in (
        f"/fhir/Patient/{rid}",  # the fast read path on PostgreSQL
        f"/fhir/Patient/{rid}/_history/1",
        "/fhir/Patient?_id=" + rid,
        "/fhir/metadata",
    ):
        body = assert_outcome(client.get(path, headers=wants), 406, "not-supported")
        assert "application/fhir+json" in body["issue"][0]["diagnostics"]
    r = client.post("/fhir/Patient", json=patient(uid), headers={**FHIR, **wants})
    assert_outcome(r, 406, "not-supported")
    assert len(client.get(f"/fhir/Patient?identifier=urn:sys|{uid}").json()["entry"]) == 1


@pytest.mark.parametrize("fmt", ["xml", "application/fhir+xml", "text/xml", "ttl"])
def test_format_without_json_is_406(client: TestClient, uid: str, fmt: str) -> None:
    rid = create(client, patient(uid))["id"]
    for path in (f"/fhir/Patient/{rid}", "/fhir/Patient", "/fhir/metadata"):
        r = client.get(path, params={"_format": fmt})
        assert_outcome(r, 406, "not-supported", ["_format"])


@pytest.mark.parametrize(
    ("accept", "fmt"),
    [
        (None, None),
        ("*/*", None),
        ("application/*", None),
        ("application/fhir+xml;q=0.9, application/fhir+json", None),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", None),
        ("application/json", None),
        ("application/fhir+xml", "json"),  # _format overrides Accept
        (None, "application/fhir+json"),
        (None, "application/fhir json"),  # an unencoded '+' in the query
    ],
)
def test_json_acceptable_requests_are_answered(
    client: TestClient, uid: str, accept: str | None, fmt: str | None
) -> None:
    rid = create(client, patient(uid))["id"]
    headers = {"Accept": accept} if accept else {}
    params = {"_format": fmt} if fmt else {}
    r = client.get(f"/fhir/Patient/{rid}", headers=headers, params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    r = client.get("/fhir/Patient", headers=headers, params={**params, "_id": rid})
    assert r.status_code == 200, r.text


def test_a_body_without_content_type_is_415(client: TestClient, uid: str) -> None:
    raw = orjson.dumps(patient(uid))
    r = client.post("/fhir/Patient", content=raw)
    assert "content-type" not in r.request.headers
    body = assert_outcome(r, 415, "not-supported")
    assert "application/fhir+json" in body["issue"][0]["diagnostics"]
    assert_outcome(client.put("/fhir/Patient/x", content=raw), 415, "not-supported")
    r = client.patch("/fhir/Patient/x", content=b'[{"op": "remove", "path": "/active"}]')
    assert_outcome(r, 415, "not-supported")
    r = client.post("/fhir/Patient/_search", content=b"identifier=" + uid.encode())
    assert_outcome(r, 415, "not-supported")
    assert client.get("/fhir/Patient").json()["total"] == 0
    # Without a body, an operation needs no Content-Type.
    assert client.post("/fhir/Patient/_search").status_code == 200


@pytest.mark.parametrize("media", ["application/json", "application/fhir+json"])
def test_patch_takes_json_patch_only(client: TestClient, uid: str, media: str) -> None:
    rid = create(client, patient(uid, active=True))["id"]
    ops = [{"op": "replace", "path": "/active", "value": False}]
    r = client.patch(f"/fhir/Patient/{rid}", json=ops, headers={"Content-Type": media})
    body = assert_outcome(r, 415, "not-supported")
    assert "application/json-patch+json" in body["issue"][0]["diagnostics"]
    assert client.get(f"/fhir/Patient/{rid}").json()["active"] is True


def test_xml_bodies_are_415(client: TestClient) -> None:
    xml = b'<Patient xmlns="http://hl7.org/fhir"><active value="true"/></Patient>'
    for media in ("application/fhir+xml", "application/xml", "text/xml"):
        r = client.post("/fhir/Patient", content=xml, headers={"Content-Type": media})
        assert_outcome(r, 415, "not-supported")
        bundle = xml.replace(b"Patient", b"Bundle")
        assert_outcome(
            client.post("/fhir", content=bundle, headers={"Content-Type": media}),
            415,
            "not-supported",
        )
    assert client.get("/fhir/Patient").json()["total"] == 0


def test_unknown_uuid_in_the_id_is_404_not_400(client: TestClient) -> None:
    """Only ids that cannot exist are refused; a well-formed unknown id is still 404."""
    assert_outcome(client.get(f"/fhir/Patient/{uuid.uuid4()}"), 404, "not-found")
