"""Index extraction by the R4 element type of each value, not by the shape of its JSON.

Two SearchParameters over `Observation.value` (a choice element: Quantity,
CodeableConcept, string, boolean, dateTime, Period, ...) show where guessing a
value's type from its JSON goes wrong: a string that reads as a date is not a
date, and a Quantity without a code is not an Identifier (both have `value`).
The search tests run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from hub.api import create_app
from hub.interactions.context import Context
from hub.parameters.stored import RegistryHolder
from hub.search import types as search_types
from hub.search.extract import extract
from hub.search.registry import assemble, from_resources, shipped_params
from hub.search.types import date, token
from hub.settings import Settings
from hub.store.search import types as store_types

FHIR = {"Content-Type": "application/fhir+json"}


def _parameter(code: str, kind: str) -> dict[str, Any]:
    return {
        "resourceType": "SearchParameter",
        "url": f"urn:test:SearchParameter/Observation-{code}",
        "name": code,
        "status": "active",
        "code": code,
        "base": ["Observation"],
        "type": kind,
        "expression": "Observation.value",
    }


VALUE_DATE = _parameter("value-date", "date")
VALUE_TOKEN = _parameter("value-token", "token")


def _rows(resource: dict[str, Any], table: str, code: str) -> list[dict[str, Any]]:
    shipped = shipped_params()
    added, refused = from_resources([VALUE_DATE, VALUE_TOKEN], shipped)
    assert added and not refused
    rows = extract(assemble([*shipped, *added]), resource)
    return [r for r in rows.get(table, []) if r["param"] == code]


def _obs(rid: str, **value: Any) -> dict[str, Any]:
    """An Observation with this value[x]."""
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {"text": "x"},
        **value,
    }


def test_a_string_that_reads_as_a_date_is_not_date_indexed() -> None:
    as_string = _obs("s", valueString="2024-01-05")
    as_date = _obs("d", valueDateTime="2024-01-05")
    assert _rows(as_string, "search_date", "value-date") == []
    (row,) = _rows(as_date, "search_date", "value-date")
    assert (row["low"].isoformat(), row["high"].isoformat()) == (
        "2024-01-05T00:00:00+00:00",
        "2024-01-06T00:00:00+00:00",
    )
    # Guessed from its JSON, the string would have been a date.
    assert date.ranges_of("2024-01-05", None) != []
    assert date.ranges_of("2024-01-05", "string") == []


def test_a_quantity_without_code_gives_no_token_where_its_shape_reads_as_an_identifier() -> None:
    quantity = {"value": 5, "unit": "mg"}
    assert _rows(_obs("q", valueQuantity=quantity), "search_token", "value-token") == []
    # Its keys ({value, unit}) are an Identifier's to a guess: token '5'.
    assert token.pairs(quantity, None) == [(None, "5")]
    assert token.pairs(quantity, "Quantity") == []
    assert token.pairs({"system": "urn:mrn", "value": "5"}, "Identifier") == [("urn:mrn", "5")]
    coded = {"value": 5, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}
    assert [
        (r["system"], r["code"])
        for r in _rows(_obs("c", valueQuantity=coded), "search_token", "value-token")
    ] == [("http://unitsofmeasure.org", "mg")]
    booleans = _rows(_obs("b", valueBoolean=True), "search_token", "value-token")
    assert [(r["system"], r["code"]) for r in booleans] == [(None, "true")]


def test_every_type_has_its_store_conditions() -> None:
    assert set(search_types.TYPES) == set(store_types.TYPES)
    for name, module in search_types.TYPES.items():
        assert module.MODIFIERS is not None, name
        assert store_types.TYPES[name].TABLE is not None, name


@pytest.fixture()
def typed_hub(ctx: Context, settings: Settings) -> Iterator[TestClient]:
    shipped = shipped_params()
    added, refused = from_resources([VALUE_DATE, VALUE_TOKEN], shipped)
    assert added and not refused
    holder = RegistryHolder(ctx.repo, shipped=[*shipped, *added])
    custom = dataclasses.replace(ctx, registries=holder)
    with TestClient(create_app(settings, custom), raise_server_exceptions=False) as c:
        yield c


def _ids(client: TestClient, query: str, uid: str) -> list[str]:
    r = client.get(f"/fhir/Observation?{query}&_count=100")
    assert r.status_code == 200, r.text
    ids = [e["resource"]["id"] for e in r.json().get("entry", [])]
    return sorted(i.removeprefix(f"{uid}-") for i in ids if i.startswith(uid))


def test_search_by_element_type(typed_hub: TestClient, uid: str) -> None:
    bodies = {
        "string": {"valueString": "2024-01-05"},
        "datetime": {"valueDateTime": "2024-01-05T10:00:00Z"},
        "quantity": {"valueQuantity": {"value": 5, "unit": "mg"}},
        "boolean": {"valueBoolean": True},
    }
    for short, value in bodies.items():
        body = _obs(f"{uid}-{short}", **value)
        r = typed_hub.put(f"/fhir/Observation/{body['id']}", json=body, headers=FHIR)
        assert r.status_code == 201, r.text
    assert _ids(typed_hub, "value-date=2024-01-05", uid) == ["datetime"]
    assert _ids(typed_hub, "value-token=5", uid) == []
    assert _ids(typed_hub, "value-token=true", uid) == ["boolean"]
