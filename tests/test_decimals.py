"""Decimals keep the precision they were written with (https://hl7.org/fhir/R4/datatypes.html#decimal):
`100.00` is read back as `100.00`, not `100.0`, through create, patch and transactions.
On SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import copy

from fastapi.testclient import TestClient

from hub.fhir.jsonbytes import dumps, loads

FHIR = {"Content-Type": "application/fhir+json"}
OBSERVATION = (
    b'{"resourceType":"Observation","status":"final","code":{"text":"weight"},'
    b'"valueQuantity":{"value":100.00,"unit":"kg"},'
    b'"component":[{"code":{"text":"a"},"valueQuantity":{"value":1e2}},'
    b'{"code":{"text":"b"},"valueQuantity":{"value":0.10}},'
    b'{"code":{"text":"c"},"valueQuantity":{"value":72.5}}]}'
)
WRITTEN = (b'"value":100.00', b'"value":1e2', b'"value":0.10', b'"value":72.5')


def test_loads_keeps_the_text_of_decimals_a_float_would_change() -> None:
    value = loads(b'{"a":100.00,"b":[1e2,0.10,2.5,3],"id":"6f1c1a0e-3e5a","s":"x"}')
    assert value["a"] == 100.0 and value["b"][1] == 0.1
    assert dumps(value) == b'{"a":100.00,"b":[1e2,0.10,2.5,3],"id":"6f1c1a0e-3e5a","s":"x"}'
    assert dumps(copy.deepcopy(value)) == dumps(value)
    assert type(loads(b'{"a":2.5}')["a"]) is float  # the common case stays a plain float


def test_a_created_resource_is_read_back_with_its_decimals_as_written(client: TestClient) -> None:
    created = client.post("/fhir/Observation", content=OBSERVATION, headers=FHIR)
    assert created.status_code == 201, created.text
    read = client.get(f"/fhir/Observation/{created.json()['id']}")
    for written in WRITTEN:
        assert written in read.content
    found = client.get("/fhir/Observation", params={"value-quantity": "100"})
    assert created.json()["id"] in {e["resource"]["id"] for e in found.json().get("entry", [])}


def test_a_patch_keeps_the_decimals_it_does_not_touch(client: TestClient) -> None:
    created = client.post("/fhir/Observation", content=OBSERVATION, headers=FHIR).json()
    patched = client.patch(
        f"/fhir/Observation/{created['id']}",
        content=b'[{"op":"replace","path":"/component/2/valueQuantity/value","value":5.50}]',
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert patched.status_code == 200, patched.text
    body = client.get(f"/fhir/Observation/{created['id']}").content
    assert b'"value":100.00' in body and b'"value":5.50' in body


def test_transaction_entries_keep_their_decimals(client: TestClient) -> None:
    patch = base64.b64encode(b'[{"op":"add","path":"/valueQuantity/value","value":3.30}]')
    created = client.post("/fhir/Observation", content=OBSERVATION, headers=FHIR).json()
    bundle = (
        b'{"resourceType":"Bundle","type":"transaction","entry":['
        b'{"fullUrl":"urn:uuid:1","resource":' + OBSERVATION + b","
        b'"request":{"method":"POST","url":"Observation"}},'
        b'{"resource":{"resourceType":"Binary","contentType":"application/json-patch+json",'
        b'"data":"'
        + patch
        + b'"},"request":{"method":"PATCH","url":"Observation/'
        + created["id"].encode()
        + b'"}}]}'
    )
    response = client.post("/fhir", content=bundle, headers=FHIR)
    assert response.status_code == 200, response.text
    location = response.json()["entry"][0]["response"]["location"]
    new = client.get("/fhir/" + location.split("/_history")[0]).content
    for written in WRITTEN:
        assert written in new
    assert b'"value":3.30' in client.get(f"/fhir/Observation/{created['id']}").content
