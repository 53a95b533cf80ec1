"""FHIR R4 search semantics over HTTP: https://hl7.org/fhir/R4/search.html

Every test seeds a few plain resources (ids made unique with `uid`, the store
emptied before each test) and asserts the exact set, or order, of the ids a
search answers. Runs on SQLite and on PostgreSQL.

Choices where the specification leaves room:
- a date, dateTime or instant without a time zone is read as UTC;
- `ap` on dates widens the searched range by a tenth of its distance from now
  (at least a day), on numbers and quantities by a tenth of the value;
- `gt`/`lt`/`ge`/`le` on numbers and quantities compare with the value as
  written; `eq`/`ne` use the range its precision implies (5.4 is [5.35, 5.45));
- `value||unit` on a quantity matches the code or the human unit;
- `_sort` puts resources without the sort value last in either direction, and
  ties are broken by id;
- with `Prefer: handling=lenient`, an ignored parameter is left out of the
  self link (the self link shows the criteria that were applied).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from hub.api import create_app
from hub.interactions.context import Context
from hub.search.registry import from_resources, shipped_params
from hub.search.stored import RegistryHolder
from hub.settings import Settings

BASE = "http://hub.test/fhir"
FHIR = {"Content-Type": "application/fhir+json"}
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
SUBSETTED = "SUBSETTED"
AMBULATORY = {"status": "finished", "class": {"code": "AMB"}}  # an Encounter's required parts

# RiskAssessment.prediction.probability (number): not in the shipped definitions,
# so number searches run on a hub given this SearchParameter at start-up.
PROBABILITY = {
    "resourceType": "SearchParameter",
    "url": "http://hl7.org/fhir/SearchParameter/RiskAssessment-probability",
    "name": "probability",
    "status": "active",
    "code": "probability",
    "base": ["RiskAssessment"],
    "type": "number",
    "expression": "RiskAssessment.prediction.probability",
}


# --- helpers -----------------------------------------------------------------


class Hub:
    """The client, with ids made unique by `uid` and shown back without it."""

    def __init__(self, client: TestClient, uid: str) -> None:
        self.client = client
        self.uid = uid

    def id(self, short: str) -> str:
        return f"{self.uid}-{short}"

    def short(self, rid: str) -> str:
        return rid.removeprefix(f"{self.uid}-")

    def ref(self, resource_type: str, short: str) -> dict[str, str]:
        return {"reference": f"{resource_type}/{self.id(short)}"}

    def put(self, resource_type: str, short: str, **body: Any) -> dict[str, Any]:
        resource = {"resourceType": resource_type, "id": self.id(short), **body}
        r = self.client.put(f"/fhir/{resource_type}/{resource['id']}", json=resource, headers=FHIR)
        assert r.status_code in (200, 201), r.text
        stored: dict[str, Any] = r.json()
        return stored

    def delete(self, resource_type: str, short: str) -> None:
        r = self.client.delete(f"/fhir/{resource_type}/{self.id(short)}")
        assert r.status_code == 204, r.text

    def get(self, url: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.client.get(url if url.startswith("/") else f"/fhir/{url}", headers=headers)

    def bundle(self, url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        r = self.get(url, headers)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        assert body["resourceType"] == "Bundle"
        assert body["type"] == "searchset"
        return body

    def order(self, url: str, headers: dict[str, str] | None = None) -> list[str]:
        """Short ids of the matches, in the order given."""
        body = self.bundle(url, headers)
        return [
            self.short(e["resource"]["id"])
            for e in body.get("entry", [])
            if e["search"]["mode"] == "match"
        ]

    def find(self, url: str, headers: dict[str, str] | None = None) -> list[str]:
        """Short ids of the matches, sorted."""
        return sorted(self.order(url, headers))

    def entries(self, url: str) -> list[tuple[str, str]]:
        """(search mode, Type/short id) of every entry, sorted."""
        body = self.bundle(url)
        return sorted(
            (
                e["search"]["mode"],
                f"{e['resource']['resourceType']}/{self.short(e['resource']['id'])}",
            )
            for e in body.get("entry", [])
        )


@pytest.fixture()
def hub(client: TestClient, uid: str) -> Hub:
    return Hub(client, uid)


@pytest.fixture()
def number_hub(ctx: Context, settings: Settings, uid: str) -> Iterator[Hub]:
    """The hub with RiskAssessment?probability (a number parameter) registered."""
    shipped = shipped_params()
    added, refused = from_resources([PROBABILITY], shipped)
    assert added and not refused
    holder = RegistryHolder(ctx.repo, shipped=[*shipped, *added])
    custom = dataclasses.replace(ctx, registries=holder)
    with TestClient(create_app(settings, custom), raise_server_exceptions=False) as c:
        yield Hub(c, uid)


@pytest.fixture()
def lenient_hub(ctx: Context, settings: Settings, uid: str) -> Iterator[Hub]:
    """The hub without referential integrity: a reference may outlive its target, as in a
    store written before it, and searches must still leave the deleted target out."""
    off = settings.model_copy(update={"referential_integrity": False})
    with TestClient(
        create_app(off, dataclasses.replace(ctx, settings=off)), raise_server_exceptions=False
    ) as c:
        yield Hub(c, uid)


def assert_error(r: httpx.Response, status: int, name: str, code: str | None = None) -> None:
    """An OperationOutcome error that names the parameter `name`."""
    assert r.status_code == status, r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome", body
    issue = body["issue"][0]
    assert issue["severity"] == "error"
    if code is not None:
        assert issue["code"] == code, issue
    assert name in issue["diagnostics"] or name in issue.get("expression", []), issue


def links(body: dict[str, Any]) -> dict[str, str]:
    return {link["relation"]: link["url"] for link in body.get("link", [])}


def relative(url: str) -> str:
    parts = urlsplit(url)
    assert url.startswith(BASE), url
    return parts.path + (f"?{parts.query}" if parts.query else "")


def cc(system: str, code: str, display: str | None = None, text: str | None = None) -> Any:
    coding = {"system": system, "code": code, **({"display": display} if display else {})}
    return {"coding": [coding], **({"text": text} if text else {})}


def observation(code: str = "x", **body: Any) -> dict[str, Any]:
    return {"status": "final", "code": cc(LOINC, code), **body}


# --- string ------------------------------------------------------------------


def test_string_starts_with_ignoring_case_and_accents(hub: Hub) -> None:
    hub.put("Patient", "a", name=[{"family": "Müller"}])
    hub.put("Patient", "b", name=[{"family": "Muller"}])
    hub.put("Patient", "c", name=[{"family": "Mullerson"}])
    hub.put("Patient", "d", name=[{"family": "Schmuller"}])
    hub.put("Patient", "e")
    assert hub.find("Patient?family=muller") == ["a", "b", "c"]
    assert hub.find("Patient?family=MÜLLER") == ["a", "b", "c"]
    assert hub.find("Patient?family=Mül") == ["a", "b", "c"]
    assert hub.find("Patient?family=mullers") == ["c"]
    assert hub.find("Patient?family=uller") == []


def test_string_exact_and_contains(hub: Hub) -> None:
    hub.put("Patient", "a", name=[{"family": "Müller"}])
    hub.put("Patient", "b", name=[{"family": "Muller"}])
    hub.put("Patient", "c", name=[{"family": "Mullerson"}])
    hub.put("Patient", "d", name=[{"family": "Schmuller"}])
    assert hub.find("Patient?family:exact=Müller") == ["a"]
    assert hub.find("Patient?family:exact=Muller") == ["b"]
    assert hub.find("Patient?family:exact=müller") == []
    assert hub.find("Patient?family:exact=Mull") == []
    assert hub.find("Patient?family:contains=ULL") == ["a", "b", "c", "d"]
    assert hub.find("Patient?family:contains=lers") == ["c"]
    assert hub.find("Patient?family:contains=schm") == ["d"]
    assert hub.find("Patient?family:contains=xyz") == []


def test_string_on_human_name_parts(hub: Hub) -> None:
    hub.put(
        "Patient",
        "a",
        name=[{"family": "Smith", "given": ["John", "Quincy"], "text": "Dr John Q Smith"}],
    )
    hub.put("Patient", "b", name=[{"text": "Jane Doe"}])
    hub.put("Patient", "c", name=[{"family": "Jones", "given": ["Smithers"]}])
    hub.put("Patient", "d", name=[{"prefix": ["Sir"], "suffix": ["III"]}])
    assert hub.find("Patient?name=smith") == ["a", "c"]
    assert hub.find("Patient?family=smith") == ["a"]
    assert hub.find("Patient?given=smith") == ["c"]
    assert hub.find("Patient?given=quin") == ["a"]
    assert hub.find("Patient?name=jane") == ["b"]
    assert hub.find("Patient?name=dr%20john") == ["a"]
    assert hub.find("Patient?name=doe") == []
    assert hub.find("Patient?family=jane") == []
    assert hub.find("Patient?name=sir") == ["d"]
    assert hub.find("Patient?name=iii") == ["d"]


def test_string_on_address_parts(hub: Hub) -> None:
    hub.put(
        "Patient",
        "a",
        address=[{"line": ["1 Main St"], "city": "Zürich", "postalCode": "8001", "country": "CH"}],
    )
    hub.put("Patient", "b", address=[{"city": "Bern", "postalCode": "3001", "text": "Platz 3"}])
    hub.put("Patient", "c", address=[{"city": "Basel", "postalCode": "4001"}])
    assert hub.find("Patient?address-city=zurich") == ["a"]
    assert hub.find("Patient?address-city=b") == ["b", "c"]
    assert hub.find("Patient?address-city:exact=Bern") == ["b"]
    assert hub.find("Patient?address-postalcode=80") == ["a"]
    assert hub.find("Patient?address-postalcode=3001") == ["b"]
    assert hub.find("Patient?address=1%20main") == ["a"]
    assert hub.find("Patient?address=platz") == ["b"]
    assert hub.find("Patient?address=4001") == ["c"]
    assert hub.find("Patient?address-country=ch") == ["a"]
    assert hub.find("Patient?address-city=8001") == []


# --- token -------------------------------------------------------------------


def _token_patients(hub: Hub) -> None:
    hub.put(
        "Patient",
        "a",
        gender="male",
        active=True,
        identifier=[{"system": "urn:s1", "value": "123"}],
        telecom=[{"system": "phone", "value": "555-1000"}, {"system": "email", "value": "a@x.org"}],
    )
    hub.put(
        "Patient",
        "b",
        gender="female",
        active=False,
        identifier=[{"system": "urn:s2", "value": "123"}],
        telecom=[{"system": "email", "value": "b@x.org"}],
    )
    hub.put(
        "Patient",
        "c",
        identifier=[{"value": "123"}],
        telecom=[{"system": "phone", "value": "a@x.org"}],
    )


def test_token_code_and_system_forms(hub: Hub) -> None:
    _token_patients(hub)
    assert hub.find("Patient?identifier=123") == ["a", "b", "c"]
    assert hub.find("Patient?identifier=urn:s1|123") == ["a"]
    assert hub.find("Patient?identifier=|123") == ["c"]
    assert hub.find("Patient?identifier=urn:s2|") == ["b"]
    assert hub.find("Patient?identifier=urn:s1|999") == []
    assert hub.find("Patient?identifier=12") == []  # tokens match whole codes
    assert hub.find("Patient?gender=male") == ["a"]
    assert hub.find("Patient?gender=male,female") == ["a", "b"]


def test_token_not_includes_resources_without_the_element(hub: Hub) -> None:
    _token_patients(hub)
    assert hub.find("Patient?gender:not=male") == ["b", "c"]
    assert hub.find("Patient?gender:not=male,female") == ["c"]
    assert hub.find("Patient?active:not=true") == ["b", "c"]
    assert hub.find("Patient?identifier:not=urn:s1|123") == ["b", "c"]


def test_token_missing(hub: Hub) -> None:
    _token_patients(hub)
    assert hub.find("Patient?gender:missing=true") == ["c"]
    assert hub.find("Patient?gender:missing=false") == ["a", "b"]
    assert hub.find("Patient?active:missing=true") == ["c"]
    assert hub.find("Patient?email:missing=true") == ["c"]


def test_token_on_boolean_and_contact_points(hub: Hub) -> None:
    _token_patients(hub)
    assert hub.find("Patient?active=true") == ["a"]
    assert hub.find("Patient?active=false") == ["b"]
    assert hub.find("Patient?phone=555-1000") == ["a"]
    assert hub.find("Patient?phone=a@x.org") == ["c"]
    assert hub.find("Patient?email=a@x.org") == ["a"]
    assert hub.find("Patient?email=b@x.org,555-1000") == ["b"]
    assert hub.find("Patient?telecom=a@x.org") == ["a", "c"]
    assert hub.find("Patient?telecom=email|a@x.org") == ["a"]
    assert hub.find("Patient?telecom=phone|") == ["a", "c"]


def test_token_on_coding_codeable_concept_and_code(hub: Hub) -> None:
    hub.put(
        "Observation",
        "a",
        status="final",
        code=cc(LOINC, "2339-0", "Glucose [Mass/volume] in Blood", "Blood sugar"),
    )
    hub.put("Observation", "b", status="amended", code=cc(LOINC, "718-7", "Hemoglobin"))
    hub.put("Observation", "c", status="final", code=cc("urn:local", "718-7"))
    act = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
    hub.put("Encounter", "e1", status="finished", **{"class": {"system": act, "code": "AMB"}})
    hub.put("Encounter", "e2", status="planned", **{"class": {"system": act, "code": "IMP"}})
    assert hub.find("Observation?code=718-7") == ["b", "c"]
    assert hub.find(f"Observation?code={LOINC}|718-7") == ["b"]
    assert hub.find(f"Observation?code={LOINC}|") == ["a", "b"]
    assert hub.find("Observation?code=|718-7") == []
    assert hub.find("Observation?status=final") == ["a", "c"]
    assert hub.find("Observation?status=amended,cancelled") == ["b"]
    assert hub.find(f"Encounter?class={act}|AMB") == ["e1"]
    assert hub.find("Encounter?class=IMP") == ["e2"]
    assert hub.find("Encounter?status=finished") == ["e1"]


def test_token_text_searches_text_and_display(hub: Hub) -> None:
    hub.put("Observation", "a", status="final", code=cc(LOINC, "2339-0", "Glucose", "Blood sugar"))
    hub.put("Observation", "b", status="final", code=cc(LOINC, "718-7", "Hemoglobin"))
    hub.put("Observation", "c", status="final", code={"text": "Blood pressure"})
    assert hub.find("Observation?code:text=glucose") == ["a"]
    assert hub.find("Observation?code:text=BLOOD") == ["a", "c"]
    assert hub.find("Observation?code:text=hemo") == ["b"]
    assert hub.find("Observation?code:text=sugar") == []


def test_token_of_type_on_identifier(hub: Hub) -> None:
    mr = {"coding": [{"system": V2_0203, "code": "MR"}]}
    ss = {"coding": [{"system": V2_0203, "code": "SS"}]}
    hub.put("Patient", "a", identifier=[{"type": mr, "system": "urn:mrn", "value": "777"}])
    hub.put("Patient", "b", identifier=[{"type": ss, "value": "777"}])
    hub.put("Patient", "c", identifier=[{"system": "urn:mrn", "value": "777"}])
    assert hub.find(f"Patient?identifier:of-type={V2_0203}|MR|777") == ["a"]
    assert hub.find(f"Patient?identifier:of-type={V2_0203}|SS|777") == ["b"]
    assert hub.find(f"Patient?identifier:of-type={V2_0203}|MR|778") == []
    assert hub.find("Patient?identifier:of-type=urn:other|MR|777") == []
    assert_error(hub.get("Patient?identifier:of-type=MR|777"), 400, "identifier:of-type")


# --- date --------------------------------------------------------------------


def test_date_prefixes_against_each_precision(hub: Hub) -> None:
    for short, value in [
        ("y", "2024"),
        ("m", "2024-03"),
        ("d", "2024-03-05"),
        ("d2", "2024-03-06"),
        ("e", "2023-12-31"),
        ("old", "2019-06-01"),
    ]:
        hub.put("Patient", short, birthDate=value)
    hub.put("Patient", "none")
    assert hub.find("Patient?birthdate=2024") == ["d", "d2", "m", "y"]
    assert hub.find("Patient?birthdate=2024-03") == ["d", "d2", "m"]
    assert hub.find("Patient?birthdate=2024-03-05") == ["d"]
    assert hub.find("Patient?birthdate=eq2024-03-05") == ["d"]
    assert hub.find("Patient?birthdate=ne2024-03") == ["e", "old", "y"]
    assert hub.find("Patient?birthdate=lt2024-03-05") == ["e", "m", "old", "y"]
    assert hub.find("Patient?birthdate=le2024-03-05") == ["d", "e", "m", "old", "y"]
    assert hub.find("Patient?birthdate=gt2024-03-05") == ["d2", "m", "y"]
    assert hub.find("Patient?birthdate=ge2024-03-05") == ["d", "d2", "m", "y"]
    assert hub.find("Patient?birthdate=sa2024-03-05") == ["d2"]
    assert hub.find("Patient?birthdate=eb2024-03-05") == ["e", "old"]
    assert hub.find("Patient?birthdate=sa2023") == ["d", "d2", "m", "y"]
    assert hub.find("Patient?birthdate=eb2024-03") == ["e", "old"]
    assert hub.find("Patient?birthdate=ap2024-03-05") == ["d", "d2", "e", "m", "y"]
    assert hub.find("Patient?birthdate=2024-03-05T10:00:00Z") == []
    assert hub.find("Patient?birthdate:missing=true") == ["none"]


def test_date_time_zones_and_periods_on_date_time(hub: Hub) -> None:
    hub.put("Observation", "o1", **observation(), effectiveDateTime="2024-03-05T23:30:00+02:00")
    hub.put("Observation", "o2", **observation(), effectiveDateTime="2024-03-05T23:30:00-02:00")
    hub.put("Observation", "o3", **observation(), effectiveInstant="2024-03-06T00:15:00.000Z")
    hub.put(
        "Observation",
        "o4",
        **observation(),
        effectivePeriod={"start": "2024-03-04", "end": "2024-03-05T12:00:00Z"},
    )
    hub.put(
        "Observation", "o5", **observation(), effectivePeriod={"start": "2024-03-06T10:00:00+01:00"}
    )
    assert hub.find("Observation?date=2024-03-05") == ["o1"]
    assert hub.find("Observation?date=2024-03-06") == ["o2", "o3"]
    assert hub.find("Observation?date=ge2024-03-06") == ["o2", "o3", "o5"]
    assert hub.find("Observation?date=lt2024-03-05") == ["o4"]
    assert hub.find("Observation?date=2024-03-05T21:30:00Z") == ["o1"]
    assert hub.find("Observation?date=2024-03-05T23:30:00%2B02:00") == ["o1"]
    assert hub.find("Observation?date=2024-03-05T21:30:00-02:00") == []
    assert hub.find("Observation?date=gt2024-03-05T23:00:00%2B02:00") == ["o1", "o2", "o3", "o5"]
    assert hub.find("Observation?date=sa2024-03-05T22:00:00Z") == ["o2", "o3", "o5"]
    assert hub.find("Observation?date=eb2024-03-05T22:00:00Z") == ["o1", "o4"]
    assert hub.find("Observation?date=le2024-03-05T12:00:00Z") == ["o4"]


def test_date_on_stored_periods(hub: Hub) -> None:
    hub.put(
        "Encounter",
        "e1",
        **AMBULATORY,
        period={"start": "2024-03-05T08:00:00Z", "end": "2024-03-07T10:00:00Z"},
    )
    hub.put("Encounter", "e2", **AMBULATORY, period={"start": "2024-03-01"})
    hub.put("Encounter", "e3", **AMBULATORY, period={"end": "2024-02-28"})
    hub.put("Encounter", "e4", **AMBULATORY)
    assert hub.find("Encounter?date=2024-03") == ["e1"]
    assert hub.find("Encounter?date=2024-03-06") == []
    assert hub.find("Encounter?date=ge2024-03-06") == ["e1", "e2"]
    assert hub.find("Encounter?date=gt2024-03-06") == ["e1", "e2"]
    assert hub.find("Encounter?date=gt2024-03-07") == ["e2"]
    assert hub.find("Encounter?date=lt2024-03-01") == ["e3"]
    assert hub.find("Encounter?date=le2024-03-01") == ["e3"]
    assert hub.find("Encounter?date=lt2024-03-06") == ["e1", "e2", "e3"]
    assert hub.find("Encounter?date=sa2024-02-28") == ["e1", "e2"]
    assert hub.find("Encounter?date=eb2024-03-01") == ["e3"]
    assert hub.find("Encounter?date=ne2024-03") == ["e2", "e3"]
    assert hub.find("Encounter?date:missing=true") == ["e4"]


def test_date_on_instants(hub: Hub) -> None:
    hub.put("Patient", "x")
    prov = {"target": [hub.ref("Patient", "x")], "agent": [{"who": {"display": "x"}}]}
    hub.put("Provenance", "p1", **prov, recorded="2024-03-05T10:00:00.123+02:00")
    hub.put("Provenance", "p2", **prov, recorded="2024-03-05T08:00:01Z")
    hub.put("Provenance", "p3", **prov, recorded="2024-03-06T00:00:00Z")
    assert hub.find("Provenance?recorded=2024-03-05T08:00:00Z") == ["p1"]
    assert hub.find("Provenance?recorded=2024-03-05T10:00:00.123%2B02:00") == ["p1"]
    assert hub.find("Provenance?recorded=2024-03-05T10:00:00.12%2B02:00") == ["p1"]
    assert hub.find("Provenance?recorded=gt2024-03-05T08:00:00Z") == ["p2", "p3"]
    assert hub.find("Provenance?recorded=lt2024-03-05T08:00:01Z") == ["p1"]
    assert hub.find("Provenance?recorded=2024-03-05") == ["p1", "p2"]
    assert hub.find("Provenance?recorded=ge2024-03-06") == ["p3"]


def test_last_updated(hub: Hub) -> None:
    hub.put("Patient", "a")
    time.sleep(0.01)
    b = hub.put("Patient", "b")
    time.sleep(0.01)
    hub.put("Patient", "c")
    at = quote(b["meta"]["lastUpdated"])
    assert hub.find(f"Patient?_lastUpdated={at}") == ["b"]
    assert hub.find(f"Patient?_lastUpdated=ge{at}") == ["b", "c"]
    assert hub.find(f"Patient?_lastUpdated=lt{at}") == ["a"]
    assert hub.find("Patient?_lastUpdated=gt2000-01-01") == ["a", "b", "c"]
    assert hub.find("Patient?_lastUpdated=lt2000-01-01") == []


# --- number and quantity -----------------------------------------------------


def test_number_prefixes_and_implicit_precision(number_hub: Hub) -> None:
    hub = number_hub
    hub.put("Patient", "x")
    base = {"status": "final", "subject": hub.ref("Patient", "x")}
    for short, value in [
        ("r535", 5.35),
        ("r54", 5.4),
        ("r5449", 5.449),
        ("r545", 5.45),
        ("r53", 5.3),
        ("r100", 100),
    ]:
        hub.put("RiskAssessment", short, **base, prediction=[{"probabilityDecimal": value}])
    hub.put("RiskAssessment", "none", **base)
    assert hub.find("RiskAssessment?probability=5.4") == ["r535", "r54", "r5449"]
    assert hub.find("RiskAssessment?probability=eq5.4") == ["r535", "r54", "r5449"]
    assert hub.find("RiskAssessment?probability=5.40") == ["r54"]
    assert hub.find("RiskAssessment?probability=ne5.4") == ["r100", "r53", "r545"]
    assert hub.find("RiskAssessment?probability=gt5.4") == ["r100", "r5449", "r545"]
    assert hub.find("RiskAssessment?probability=ge5.4") == ["r100", "r54", "r5449", "r545"]
    assert hub.find("RiskAssessment?probability=lt5.4") == ["r53", "r535"]
    assert hub.find("RiskAssessment?probability=le5.4") == ["r53", "r535", "r54"]
    assert hub.find("RiskAssessment?probability=100") == ["r100"]
    assert hub.find("RiskAssessment?probability=ap100") == ["r100"]
    assert hub.find("RiskAssessment?probability=ap5.4") == ["r53", "r535", "r54", "r5449", "r545"]
    assert hub.find("RiskAssessment?probability=5.4,100") == ["r100", "r535", "r54", "r5449"]
    assert hub.find("RiskAssessment?probability:missing=true") == ["none"]
    assert hub.order("RiskAssessment?_sort=-probability&_count=3") == ["r100", "r545", "r5449"]
    assert hub.order("RiskAssessment?_sort=probability") == [
        "r53",
        "r535",
        "r54",
        "r5449",
        "r545",
        "r100",
        "none",
    ]
    assert_error(hub.get("RiskAssessment?probability=abc"), 400, "probability")
    assert_error(hub.get("RiskAssessment?probability=xx5"), 400, "probability")
    assert_error(hub.get("RiskAssessment?probability=5|x|y"), 400, "probability")


def test_quantity_prefixes_precision_and_units(hub: Hub) -> None:
    for short, quantity in [
        ("q1", {"value": 5.35, "system": UCUM, "code": "mg", "unit": "mg"}),
        ("q2", {"value": 5.4, "system": UCUM, "code": "mg"}),
        ("q3", {"value": 5.449, "unit": "mg"}),
        ("q4", {"value": 5.45, "system": UCUM, "code": "mg"}),
        ("q5", {"value": 5.4, "system": "urn:other", "code": "mg"}),
        ("q6", {"value": 5.4, "system": UCUM, "code": "g", "unit": "gram"}),
    ]:
        hub.put("Observation", short, **observation(), valueQuantity=quantity)
    hub.put("Observation", "none", **observation(), valueString="n/a")
    assert hub.find("Observation?value-quantity=5.4") == ["q1", "q2", "q3", "q5", "q6"]
    assert hub.find(f"Observation?value-quantity=5.4|{UCUM}|mg") == ["q1", "q2"]
    assert hub.find("Observation?value-quantity=5.4||mg") == ["q1", "q2", "q3", "q5"]
    assert hub.find("Observation?value-quantity=5.4||gram") == ["q6"]
    assert hub.find("Observation?value-quantity=gt5.4||mg") == ["q3", "q4"]
    assert hub.find(f"Observation?value-quantity=lt5.4|{UCUM}|mg") == ["q1"]
    assert hub.find("Observation?value-quantity=ge5.45") == ["q4"]
    assert hub.find("Observation?value-quantity=le5.35") == ["q1"]
    assert hub.find(f"Observation?value-quantity=ne5.4|{UCUM}|mg") == ["q4"]
    assert hub.find("Observation?value-quantity=ap5.4||g") == ["q6"]
    assert hub.find("Observation?value-quantity=5.4|urn:other|") == ["q5"]
    assert hub.find("Observation?value-quantity:missing=true") == ["none"]
    assert_error(hub.get("Observation?value-quantity=abc"), 400, "value-quantity")
    assert_error(hub.get("Observation?value-quantity=5.4|mg"), 400, "value-quantity")
    assert_error(hub.get("Observation?value-quantity=zz5.4"), 400, "value-quantity")


# --- reference ---------------------------------------------------------------


def test_reference_forms(hub: Hub) -> None:
    hub.put("Patient", "p")
    hub.put("Patient", "p2")
    hub.put("Group", "p", type="person", actual=True)
    subject = hub.ref
    hub.put("Observation", "o1", **observation(), subject=subject("Patient", "p"))
    hub.put(
        "Observation", "o2", **observation(), subject={"reference": f"{BASE}/Patient/{hub.id('p')}"}
    )
    hub.put("Observation", "o3", **observation(), subject=subject("Patient", "p2"))
    hub.put("Observation", "o4", **observation(), subject=subject("Group", "p"))
    hub.put("Observation", "o5", **observation())
    p, p2 = hub.id("p"), hub.id("p2")
    assert hub.find(f"Observation?subject=Patient/{p}") == ["o1", "o2"]
    assert hub.find(f"Observation?subject={p}") == ["o1", "o2", "o4"]
    assert hub.find(f"Observation?subject:Patient={p}") == ["o1", "o2"]
    assert hub.find(f"Observation?subject:Group={p}") == ["o4"]
    assert hub.find(f"Observation?subject={BASE}/Patient/{p}") == ["o1", "o2"]
    assert hub.find(f"Observation?subject=Patient/{p},Patient/{p2}") == ["o1", "o2", "o3"]
    assert hub.find(f"Observation?patient={p}") == ["o1", "o2"]
    assert hub.find(f"Observation?patient=Patient/{p2}") == ["o3"]
    assert hub.find("Observation?subject:missing=true") == ["o5"]
    assert hub.find("Observation?subject:missing=false") == ["o1", "o2", "o3", "o4"]
    assert hub.find("Observation?subject=Patient/nobody") == []
    r = hub.get(f"Observation?subject:Organization={p}")
    assert_error(r, 400, "subject:Organization")


# --- uri ---------------------------------------------------------------------


def test_uri_exact_below_above_and_missing(hub: Hub) -> None:
    sd = "http://example.org/fhir/StructureDefinition"
    for short, profile in [
        ("a", f"{sd}/base"),
        ("b", f"{sd}/base/child"),
        ("c", f"{sd}/Other"),
        ("d", "http://example.org/fhir/my_profile"),
    ]:
        hub.put("Patient", short, meta={"profile": [profile], "source": f"urn:src:{short}"})
    hub.put("Patient", "e")
    assert hub.find(f"Patient?_profile={sd}/base") == ["a"]
    assert hub.find(f"Patient?_profile={sd}/bas") == []
    assert hub.find(f"Patient?_profile:below={sd}/base") == ["a", "b"]
    assert hub.find(f"Patient?_profile:below={sd}") == ["a", "b", "c"]
    assert hub.find("Patient?_profile:below=http://example.org/fhir/structuredefinition") == []
    assert hub.find(f"Patient?_profile:above={sd}/base/child/grandchild") == ["a", "b"]
    assert hub.find(f"Patient?_profile:above={sd}/base") == ["a"]
    assert hub.find("Patient?_profile:above=http://example.org/fhir/my_profile/v2") == ["d"]
    assert hub.find("Patient?_profile:above=http://example.org/fhir/myXprofile/v2") == []
    assert hub.find("Patient?_profile:missing=true") == ["e"]
    assert hub.find("Patient?_source=urn:src:a") == ["a"]
    assert hub.find("Patient?_source:below=urn:src:") == ["a", "b", "c", "d"]


# --- composite ---------------------------------------------------------------


def _bp(hub: Hub) -> None:
    def q(value: float) -> dict[str, Any]:
        return {"value": value, "system": UCUM, "code": "mm[Hg]"}

    def component(code: str, value: float) -> dict[str, Any]:
        return {"code": cc(LOINC, code), "valueQuantity": q(value)}

    hub.put("Observation", "o1", **observation("8480-6"), valueQuantity=q(120))
    hub.put(
        "Observation",
        "o2",
        **observation("85354-9"),
        component=[component("8480-6", 120), component("8462-4", 80)],
    )
    hub.put(
        "Observation",
        "o3",
        **observation("85354-9"),
        component=[component("8480-6", 150), component("8462-4", 95)],
    )


def test_composite_code_value_quantity(hub: Hub) -> None:
    _bp(hub)
    assert hub.find(f"Observation?code-value-quantity={LOINC}|8480-6$120") == ["o1"]
    assert hub.find("Observation?code-value-quantity=8480-6$gt100") == ["o1"]
    assert hub.find("Observation?code-value-quantity=8480-6$lt100") == []
    assert hub.find(f"Observation?code-value-quantity=8480-6$120|{UCUM}|mm[Hg]") == ["o1"]
    assert hub.find(f"Observation?code-value-quantity=8480-6$120|{UCUM}|mg") == []
    assert hub.find("Observation?code-value-quantity=85354-9$120") == []


def test_composite_component_and_combo(hub: Hub) -> None:
    _bp(hub)
    find = hub.find
    assert find("Observation?component-code-value-quantity=8480-6$120") == ["o2"]
    assert find("Observation?component-code-value-quantity=8480-6$80") == []  # diastolic's value
    assert find("Observation?component-code-value-quantity=8462-4$80") == ["o2"]
    assert find("Observation?component-code-value-quantity=8480-6$gt130") == ["o3"]
    assert find("Observation?component-code-value-quantity=8462-4$ge90,8480-6$lt130") == [
        "o2",
        "o3",
    ]
    both = "component-code-value-quantity=8480-6$gt130&component-code-value-quantity=8462-4"
    assert find(f"Observation?{both}$lt90") == []
    assert find(f"Observation?{both}$gt90") == ["o3"]
    assert find("Observation?combo-code-value-quantity=8480-6$120") == ["o1", "o2"]
    assert find(f"Observation?combo-code-value-quantity={LOINC}|8480-6$ge120||mm[Hg]") == [
        "o1",
        "o2",
        "o3",
    ]
    assert_error(hub.get("Observation?code-value-quantity=8480-6"), 400, "code-value-quantity")
    assert_error(hub.get("Observation?code-value-quantity=8480-6$abc"), 400, "code-value-quantity")


# --- AND, OR, escaping -------------------------------------------------------


def test_and_by_repetition_or_by_commas(hub: Hub) -> None:
    hub.put("Patient", "a", name=[{"given": ["Ann", "Beth"]}], gender="female")
    hub.put("Patient", "b", name=[{"given": ["Ann"]}], gender="male")
    hub.put("Patient", "c", name=[{"given": ["Beth"]}], gender="male")
    assert hub.find("Patient?given=ann&given=beth") == ["a"]
    assert hub.find("Patient?given=ann,beth") == ["a", "b", "c"]
    assert hub.find("Patient?given=ann,zed&given=beth") == ["a"]
    assert hub.find("Patient?given=ann,beth&gender=male") == ["b", "c"]
    assert hub.find(f"Patient?_id={hub.id('a')},{hub.id('c')}&gender=male") == ["c"]


def test_escaped_separators_are_part_of_the_value(hub: Hub) -> None:
    for short, identifier in [
        ("comma", {"value": "a,b"}),
        ("a", {"value": "a"}),
        ("b", {"value": "b"}),
        ("pipe", {"value": "x|y"}),
        ("syspipe", {"system": "urn:s", "value": "x|y"}),
        ("dollar", {"value": "p$q"}),
        ("slash", {"value": "end\\"}),
    ]:
        hub.put("Patient", short, identifier=[identifier])
    hub.put("Patient", "family", name=[{"family": "Smith,Jones"}])
    assert hub.find("Patient?identifier=a\\,b") == ["comma"]
    assert hub.find("Patient?identifier=a,b") == ["a", "b"]
    assert hub.find("Patient?identifier=x\\|y") == ["pipe", "syspipe"]
    assert hub.find("Patient?identifier=urn:s|x\\|y") == ["syspipe"]
    assert hub.find("Patient?identifier=p\\$q") == ["dollar"]
    assert hub.find("Patient?identifier=end\\\\") == ["slash"]
    assert hub.find("Patient?identifier=end\\\\,a") == ["a", "slash"]
    assert hub.find("Patient?family=smith\\,j") == ["family"]
    assert hub.find("Patient?family=smith,jones") == ["family"]
    hub.put("Observation", "o", **observation("c$1"), valueString="v,w")
    assert hub.find("Observation?code-value-string=c\\$1$v\\,w") == ["o"]
    assert hub.find("Observation?code-value-string=c\\$1$w") == []


# --- chaining and _has -------------------------------------------------------


def _chain_data(hub: Hub) -> None:
    hub.put("Patient", "ps", name=[{"family": "Smith"}], gender="male")
    hub.put("Patient", "pj", name=[{"family": "Jones"}], gender="female")
    hub.put("Location", "loc", name="Smithfield")
    hub.put("Encounter", "es", **AMBULATORY, subject=hub.ref("Patient", "ps"))
    hub.put("Encounter", "ej", **AMBULATORY, subject=hub.ref("Patient", "pj"))
    obs = observation()
    hub.put(
        "Observation",
        "o1",
        **obs,
        subject=hub.ref("Patient", "ps"),
        encounter=hub.ref("Encounter", "es"),
    )
    hub.put(
        "Observation",
        "o2",
        **obs,
        subject=hub.ref("Patient", "pj"),
        encounter=hub.ref("Encounter", "ej"),
    )
    hub.put("Observation", "o3", **obs, subject=hub.ref("Patient", "ps"))
    hub.put("Observation", "o4", **obs, subject=hub.ref("Location", "loc"))
    hub.put(
        "Observation",
        "o5",
        **obs,
        subject=hub.ref("Patient", "pj"),
        encounter=hub.ref("Encounter", "es"),
    )


def test_chained_parameters(hub: Hub) -> None:
    _chain_data(hub)
    assert hub.find("Observation?subject:Patient.name=smith") == ["o1", "o3"]
    assert hub.find("Observation?subject.name=smith") == ["o1", "o3", "o4"]
    assert hub.find("Observation?subject:Location.name=smith") == ["o4"]
    assert hub.find("Observation?subject:Patient.family:exact=Jones") == ["o2", "o5"]
    assert hub.find("Observation?subject:Patient.gender:not=male") == ["o2", "o5"]
    assert hub.find(f"Observation?subject:Patient._id={hub.id('ps')}") == ["o1", "o3"]
    assert hub.find("Observation?encounter:Encounter.subject:Patient.name=smith") == ["o1", "o5"]
    assert hub.find("Observation?encounter.subject.name=jones") == ["o2"]
    assert hub.find("Observation?subject:Patient.name=smith&encounter.subject.name=jones") == []
    assert hub.find("Observation?subject:Patient.name=smith,jones&encounter:missing=true") == ["o3"]
    assert_error(hub.get("Observation?subject:Patient.nonsense=x"), 400, "nonsense")
    assert_error(hub.get("Observation?subject:Organization.name=x"), 400, "subject")
    assert_error(hub.get("Observation?status.name=x"), 400, "status")


def test_reverse_chaining_has(hub: Hub) -> None:
    for short in ("p1", "p2", "p3", "p4"):
        hub.put("Patient", short)
    hub.put("Observation", "o1", **observation("X"), subject=hub.ref("Patient", "p1"))
    hub.put("Observation", "o2", **observation("Y"), subject=hub.ref("Patient", "p2"))
    hub.put("Encounter", "e1", **AMBULATORY, subject=hub.ref("Patient", "p3"))
    hub.put(
        "Observation",
        "o3",
        **observation("Z"),
        subject=hub.ref("Patient", "p2"),
        encounter=hub.ref("Encounter", "e1"),
    )
    assert hub.find("Patient?_has:Observation:patient:code=X") == ["p1"]
    assert hub.find("Patient?_has:Observation:patient:code=X,Y") == ["p1", "p2"]
    assert hub.find("Patient?_has:Observation:patient:code=X&_has:Observation:patient:code=Y") == []
    assert hub.find("Patient?_has:Observation:subject:code=Z") == ["p2"]
    assert hub.find("Patient?_has:Observation:patient:code=nope") == []
    assert hub.find(f"Patient?_has:Observation:patient:_id={hub.id('o1')}") == ["p1"]
    nested = "Patient?_has:Encounter:patient:_has:Observation:encounter:code=Z"
    assert hub.find(nested) == ["p3"]
    assert hub.find("Patient?_has:Encounter:patient:_has:Observation:encounter:code=X") == []
    assert hub.find("Encounter?_has:Observation:encounter:code=Z") == ["e1"]
    assert_error(hub.get("Patient?_has:Observation:nonsense:code=X"), 400, "nonsense")
    assert_error(hub.get("Patient?_has:Observation:patient:nonsense=X"), 400, "nonsense")


# --- _include and _revinclude ------------------------------------------------


def _include_data(hub: Hub) -> None:
    hub.put("Organization", "org", name="Org")
    hub.put("Patient", "p", managingOrganization=hub.ref("Organization", "org"))
    hub.put("Patient", "p2")
    hub.put("Practitioner", "pr")
    hub.put(
        "Encounter",
        "e",
        **AMBULATORY,
        subject=hub.ref("Patient", "p"),
        participant=[{"individual": hub.ref("Practitioner", "pr")}],
    )
    hub.put(
        "Observation",
        "o",
        **observation(),
        subject=hub.ref("Patient", "p"),
        encounter=hub.ref("Encounter", "e"),
    )
    hub.put("Observation", "o2", **observation(), subject=hub.ref("Patient", "p2"))


def test_include(hub: Hub) -> None:
    _include_data(hub)
    o = f"Observation?_id={hub.id('o')}"
    assert hub.entries(f"{o}&_include=Observation:subject") == [
        ("include", "Patient/p"),
        ("match", "Observation/o"),
    ]
    assert hub.entries(f"{o}&_include=Observation:subject&_include=Observation:encounter") == [
        ("include", "Encounter/e"),
        ("include", "Patient/p"),
        ("match", "Observation/o"),
    ]
    assert hub.entries(f"{o}&_include=Observation:encounter&_include=Encounter:participant") == [
        ("include", "Encounter/e"),
        ("match", "Observation/o"),
    ]
    iterate = f"{o}&_include=Observation:encounter&_include:iterate=Encounter:participant"
    assert hub.entries(iterate) == [
        ("include", "Encounter/e"),
        ("include", "Practitioner/pr"),
        ("match", "Observation/o"),
    ]
    assert hub.entries(f"{o}&_include=*") == [
        ("include", "Encounter/e"),
        ("include", "Patient/p"),
        ("match", "Observation/o"),
    ]
    assert hub.entries(f"{o}&_include=Observation:subject:Group") == [("match", "Observation/o")]
    everyone = "Observation?_include=Observation:subject&_sort=_id"
    assert hub.entries(everyone) == [
        ("include", "Patient/p"),
        ("include", "Patient/p2"),
        ("match", "Observation/o"),
        ("match", "Observation/o2"),
    ]
    assert hub.bundle(everyone)["total"] == 2  # matches only
    assert_error(hub.get(f"{o}&_include=Observation:nonsense"), 400, "_include")
    assert_error(hub.get(f"{o}&_include=Nonsense"), 400, "_include")


def test_revinclude(hub: Hub) -> None:
    _include_data(hub)
    p = f"Patient?_id={hub.id('p')}"
    assert hub.entries(f"{p}&_revinclude=Observation:subject") == [
        ("include", "Observation/o"),
        ("match", "Patient/p"),
    ]
    assert hub.entries(f"{p}&_revinclude=*") == [
        ("include", "Encounter/e"),
        ("include", "Observation/o"),
        ("match", "Patient/p"),
    ]
    assert hub.entries(f"{p}&_revinclude=Encounter:subject&_revinclude=Observation:encounter") == [
        ("include", "Encounter/e"),
        ("match", "Patient/p"),
    ]
    iterate = f"{p}&_revinclude=Encounter:subject&_revinclude:iterate=Observation:encounter"
    assert hub.entries(iterate) == [
        ("include", "Encounter/e"),
        ("include", "Observation/o"),
        ("match", "Patient/p"),
    ]
    both = f"{p}&_revinclude=Encounter:subject&_include:iterate=Encounter:participant"
    assert hub.entries(f"{both}&_include=Patient:organization") == [
        ("include", "Encounter/e"),
        ("include", "Organization/org"),
        ("include", "Practitioner/pr"),
        ("match", "Patient/p"),
    ]


# --- _sort -------------------------------------------------------------------


def _sort_data(hub: Hub) -> list[str]:
    rows = [
        ("c", "Clark", "1990-01-01", "male"),
        ("a", "Baker", "1980-01-01", "female"),
        ("f", "Zed", None, "female"),
        ("b", "adams", "1985-05-05", "male"),
        ("e", "Baker", "1995-01-01", "male"),
        ("d", None, "2000", None),
    ]
    for short, family, birth, gender in rows:
        body: dict[str, Any] = {}
        if family:
            body["name"] = [{"family": family}]
        if birth:
            body["birthDate"] = birth
        if gender:
            body["gender"] = gender
        hub.put("Patient", short, **body)
        time.sleep(0.003)  # distinct lastUpdated
    return [short for short, *_ in rows]


def test_sort_on_several_keys(hub: Hub) -> None:
    created = _sort_data(hub)
    assert hub.order("Patient?_sort=family") == ["b", "a", "e", "c", "f", "d"]
    assert hub.order("Patient?_sort=-family") == ["f", "c", "a", "e", "b", "d"]
    assert hub.order("Patient?_sort=family,-birthdate") == ["b", "e", "a", "c", "f", "d"]
    assert hub.order("Patient?_sort=birthdate") == ["a", "b", "c", "e", "d", "f"]
    assert hub.order("Patient?_sort=-birthdate") == ["d", "e", "c", "b", "a", "f"]
    assert hub.order("Patient?_sort=gender,-birthdate") == ["a", "f", "e", "c", "b", "d"]
    assert hub.order("Patient?_sort=-gender,family") == ["b", "e", "c", "a", "f", "d"]
    assert hub.order("Patient?_sort=_id") == ["a", "b", "c", "d", "e", "f"]
    assert hub.order("Patient?_sort=-_id") == ["f", "e", "d", "c", "b", "a"]
    assert hub.order("Patient?_sort=_id,-birthdate") == ["a", "b", "c", "d", "e", "f"]
    assert hub.order("Patient?_sort=_lastUpdated") == created
    assert hub.order("Patient?_sort=-_lastUpdated") == created[::-1]
    assert hub.order("Patient?_sort=family&gender=male") == ["b", "e", "c"]
    assert_error(hub.get("Patient?_sort=nonsense"), 400, "_sort")
    assert_error(hub.get("Observation?_sort=code-value-quantity"), 400, "_sort")


# --- paging ------------------------------------------------------------------


def _walk(hub: Hub, url: str, between: Any = None) -> tuple[list[list[str]], dict[str, Any]]:
    """Every page's short ids following next links; `between(n)` runs after page n."""
    pages: list[list[str]] = []
    body: dict[str, Any] = {}
    next_url: str | None = url
    while next_url is not None:
        body = hub.bundle(next_url)
        pages.append([hub.short(e["resource"]["id"]) for e in body["entry"]])
        nxt = links(body).get("next")
        if nxt is not None:
            assert "_cursor=" in nxt
        next_url = relative(nxt) if nxt else None
        if between is not None:
            between(len(pages))
        assert len(pages) < 20, "paging does not end"
    return pages, body


def test_paging_is_stable_while_data_changes(hub: Hub) -> None:
    original = [f"p{i}" for i in range(10)]
    for i, short in enumerate(original):
        hub.put("Patient", short, name=[{"family": f"Fam{i}"}], gender="male")

    def meddle(page: int) -> None:
        if page == 1:
            hub.delete("Patient", "p1")  # already seen
            hub.put("Patient", "new0", name=[{"family": "Fam0a"}], gender="male")  # before
            hub.put("Patient", "new5", name=[{"family": "Fam5a"}], gender="male")  # ahead
        if page == 2:
            hub.delete("Patient", "p0")
            hub.put("Patient", "p4", name=[{"family": "Fam4"}], gender="male", active=True)
            hub.put("Patient", "other", name=[{"family": "Fam6"}], gender="female")

    pages, _ = _walk(hub, "Patient?gender=male&_sort=family&_count=3", meddle)
    seen = [s for page in pages for s in page]
    assert len(seen) == len(set(seen))
    assert [s for s in seen if s in original] == original
    assert "new0" not in seen
    assert "new5" in seen
    assert all(len(page) == 3 for page in pages[:-1])


def test_paging_by_id_and_back_with_previous_links(hub: Hub) -> None:
    for i in range(7):
        hub.put("Patient", f"p{i}", birthDate=f"200{i % 3}", gender="male")
    hub.put("Patient", "p7", gender="male")  # no birthDate: last
    pages, last = _walk(hub, "Patient?gender=male&_sort=-birthdate&_count=3")
    forward = [s for page in pages for s in page]
    assert forward == ["p2", "p5", "p1", "p4", "p0", "p3", "p6", "p7"]
    assert [len(p) for p in pages] == [3, 3, 2]
    # ...and back from the last page.
    back: list[list[str]] = []
    body = last
    while "previous" in links(body):
        body = hub.bundle(relative(links(body)["previous"]))
        back.append([hub.short(e["resource"]["id"]) for e in body["entry"]])
        assert len(back) < 10
    assert back == pages[-2::-1]
    assert relative(links(last)["first"]).startswith("/fhir/Patient?")
    assert hub.order(relative(links(last)["first"])) == pages[0]

    hub.put("Patient", "a-new", gender="male", birthDate="2001")  # sorts before every pN
    pages, _ = _walk(hub, "Patient?gender=male&_count=4")
    assert [s for page in pages for s in page] == ["a-new", *[f"p{i}" for i in range(8)]]


def test_paging_by_last_updated_descending(hub: Hub) -> None:
    for i in range(5):
        hub.put("Patient", f"p{i}", gender="male")
        time.sleep(0.003)
    pages, _ = _walk(hub, "Patient?_sort=-_lastUpdated&_count=2")
    assert pages == [["p4", "p3"], ["p2", "p1"], ["p0"]]


def test_damaged_cursor_is_400(hub: Hub) -> None:
    assert_error(hub.get("Patient?_cursor=notacursor"), 400, "_cursor")


# --- _total, _summary, _elements ---------------------------------------------


def test_total_modes(hub: Hub) -> None:
    for i in range(3):
        hub.put("Patient", f"p{i}", gender="male")
    hub.put("Patient", "f", gender="female")
    assert hub.bundle("Patient?gender=male")["total"] == 3
    assert "total" not in hub.bundle("Patient?gender=male&_total=none")
    assert hub.bundle("Patient?gender=male&_total=accurate")["total"] == 3
    estimate = hub.bundle("Patient?gender=male&_total=estimate")["total"]
    assert isinstance(estimate, int)
    assert estimate >= 0
    first = hub.bundle("Patient?gender=male&_count=2")
    second = hub.bundle(relative(links(first)["next"]))
    assert "total" not in second
    first = hub.bundle("Patient?gender=male&_count=2&_total=accurate")
    second = hub.bundle(relative(links(first)["next"]))
    assert second["total"] == 3
    assert_error(hub.get("Patient?_total=all"), 400, "_total")


@pytest.fixture()
def counting_to_two(ctx: Context, settings: Settings, uid: str) -> Iterator[Hub]:
    """The hub stating a total without _total only up to two matches."""
    small = settings.model_copy(update={"search_total_limit": 2})
    custom = dataclasses.replace(ctx, settings=small)
    with TestClient(create_app(small, custom), raise_server_exceptions=False) as c:
        yield Hub(c, uid)


def test_total_without_total_parameter_is_counted_up_to_the_limit(counting_to_two: Hub) -> None:
    hub = counting_to_two
    for i in range(3):
        hub.put("Patient", f"p{i}", gender="male")
    hub.put("Patient", "f1", gender="female")
    hub.put("Patient", "f2", gender="female")
    assert hub.bundle("Patient?gender=female&_count=1")["total"] == 2  # at the limit: stated
    broad = hub.bundle("Patient?gender=male&_count=2")
    assert "total" not in broad  # beyond it: left out...
    assert len(broad["entry"]) == 2 and "next" in links(broad)  # ...the paging is all there
    # A first page holding every match states its total, whatever the limit: it is known.
    assert hub.bundle("Patient?gender=male")["total"] == 3
    # Asked for, the total is always counted.
    assert hub.bundle("Patient?gender=male&_total=accurate")["total"] == 3
    assert hub.bundle("Patient?gender=male&_summary=count")["total"] == 3
    assert hub.bundle("Patient?gender=male&_count=0")["total"] == 3


def test_repeated_date_parameter_with_one_or_many_values(hub: Hub) -> None:
    hub.put("Encounter", "march", **AMBULATORY, period={"start": "2024-03-05", "end": "2024-03-07"})
    hub.put("Encounter", "may", **AMBULATORY, period={"start": "2024-05-02", "end": "2024-05-03"})
    # Encounter.period holds one value: both bounds are tested on it (one index row).
    assert hub.find("Encounter?date=ge2024-03-01&date=lt2024-04-01") == ["march"]
    assert hub.find("Encounter?date=ge2024-03-06&date=le2024-05-03") == ["march", "may"]
    assert hub.find("Encounter?date=gt2024-03-07&date=lt2024-05-02") == []
    # CarePlan.activity.detail.scheduled repeats: each criterion may be met by another value.
    activity = [
        {"detail": {"status": "completed", "scheduledString": "x"}},
        {"detail": {"status": "completed", "scheduledPeriod": {"start": "2020-06-01"}}},
    ]
    activity[1]["detail"]["scheduledPeriod"]["end"] = "2020-06-02"
    activity.append(
        {
            "detail": {
                "status": "completed",
                "scheduledPeriod": {"start": "2022-06-01", "end": "2022-06-02"},
            }
        }
    )
    hub.put("Patient", "x")
    hub.put(
        "CarePlan",
        "plan",
        status="active",
        intent="plan",
        subject=hub.ref("Patient", "x"),
        activity=activity,
    )
    assert hub.find("CarePlan?activity-date=lt2021&activity-date=gt2021") == ["plan"]
    assert hub.find("CarePlan?activity-date=lt2020&activity-date=gt2021") == []


def _lab(hub: Hub, short: str, code: str, when: str | None, *, other: str | None = None) -> None:
    codings = [{"system": LOINC, "code": code}]
    if other:  # the same code in another system too
        codings.append({"system": "http://example.org/labs", "code": other})
    extra = {"effectiveDateTime": when} if when else {}
    hub.put("Observation", short, status="final", code={"coding": codings}, **extra)


def test_code_with_date_and_sort_by_date(hub: Hub) -> None:
    """`code=system|x` with a date, and sorted by date, read the `code-date` composite."""
    _lab(hub, "a1", "2339-0", "2024-01-10")
    _lab(hub, "a2", "2339-0", "2024-03-05T10:00:00Z", other="2339-0")  # two codings of 2339-0
    _lab(hub, "a3", "2339-0", "2023-12-31")
    _lab(hub, "a4", "2339-0", None)  # no date
    _lab(hub, "b1", "8302-2", "2024-02-01")
    glucose = f"{LOINC}|2339-0"
    for query, found in [
        (f"code={glucose}&date=ge2024", ["a1", "a2"]),
        (f"code={glucose}&date=ge2024-01&date=lt2024-03", ["a1"]),
        (f"code={glucose},{LOINC}|8302-2&date=ge2024-02", ["a2", "b1"]),
        ("code=2339-0&date=ge2024", ["a1", "a2"]),  # any system
    ]:
        assert hub.find(f"Observation?{query}") == found, query
        # Counted from the composite's rows: the same matches.
        total = hub.bundle(f"Observation?{query}&_total=accurate&_count=1")["total"]
        assert total == len(found), query
    assert hub.find(f"Observation?code-date={quote(glucose)}$lt2024") == ["a3"]
    # Newest first, the undated last, each once however many codings match.
    assert hub.order(f"Observation?code={glucose}&_sort=-date") == ["a2", "a1", "a3", "a4"]
    assert hub.order(f"Observation?code={glucose}&_sort=date") == ["a3", "a1", "a2", "a4"]
    assert hub.order("Observation?code=2339-0&_sort=-date") == ["a2", "a1", "a3", "a4"]
    pages, url = [], f"Observation?code={glucose}&_sort=-date&_count=1"
    while url:
        body = hub.bundle(url)
        pages += [hub.short(e["resource"]["id"]) for e in body.get("entry", [])]
        url = relative(links(body)["next"]) if "next" in links(body) else ""
    assert pages == ["a2", "a1", "a3", "a4"]
    assert hub.bundle(f"Observation?code={glucose}&date=ge2024&_total=accurate")["total"] == 2


def test_sort_over_several_types_uses_each_types_parameter(hub: Hub) -> None:
    # Encounter.date (period) holds one value, MedicationRequest.date (timing events) several.
    hub.put(
        "Encounter",
        "e1",
        **AMBULATORY,
        period={"start": "2024-02-01", "end": "2024-02-02"},
    )
    timing = {"event": ["2024-01-01", "2024-03-01"]}
    hub.put("Patient", "x")
    hub.put(
        "MedicationRequest",
        "m1",
        status="active",
        intent="order",
        subject=hub.ref("Patient", "x"),
        medicationCodeableConcept={"text": "x"},
        dosageInstruction=[{"timing": timing}],
    )
    body = hub.bundle("/fhir?_type=Encounter,MedicationRequest&_sort=date")
    found = [hub.short(e["resource"]["id"]) for e in body["entry"]]
    assert sorted(found) == ["e1", "m1"] and body["total"] == 2  # each once


def test_values_with_colons_in_a_paged_search(hub: Hub) -> None:
    for i in range(3):
        hub.put("Patient", f"p{i}", name=[{"family": "Smith :jr", "given": [f"G{i}"]}])
    body = hub.bundle(f"Patient?family={quote('Smith :jr')}&_count=2")
    assert len(body["entry"]) == 2 and "next" in links(body)


def test_a_period_ending_before_it_starts_is_its_start(hub: Hub) -> None:
    # 06:00 at +10:00 is 20:00 UTC the day before the start.
    hub.put(
        "Encounter",
        "odd",
        **AMBULATORY,
        period={"start": "2024-05-15", "end": "2024-05-15T06:00:00+10:00"},
    )
    assert hub.find("Encounter?date=ge2024-05-15") == ["odd"]
    assert hub.find("Encounter?date=le2024-05-15") == ["odd"]
    assert hub.find("Encounter?date=gt2024-05-15") == []


def _tags(resource: dict[str, Any]) -> list[str]:
    return [t["code"] for t in resource.get("meta", {}).get("tag", [])]


def test_summary_and_elements(hub: Hub) -> None:
    narrative = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'}
    hub.put(
        "Patient",
        "p",
        text=narrative,
        name=[{"family": "Summers"}],
        gender="female",
        birthDate="1970",
        maritalStatus={"text": "married"},
    )

    def only(query: str) -> dict[str, Any]:
        body = hub.bundle(f"Patient?_id={hub.id('p')}&{query}")
        (entry,) = body["entry"]
        assert entry["search"]["mode"] == "match"
        resource: dict[str, Any] = entry["resource"]
        assert resource["id"] == hub.id("p")
        assert resource["resourceType"] == "Patient"
        return resource

    full = only("_summary=false")
    assert {"text", "name", "maritalStatus"} <= set(full)
    assert SUBSETTED not in _tags(full)
    summary = only("_summary=true")
    assert {"name", "gender", "birthDate"} <= set(summary)
    assert not {"text", "maritalStatus"} & set(summary)
    assert SUBSETTED in _tags(summary)
    assert summary["meta"]["versionId"] == "1"
    text = only("_summary=text")
    assert "text" in text
    assert not {"name", "gender", "maritalStatus"} & set(text)
    assert SUBSETTED in _tags(text)
    data = only("_summary=data")
    assert "text" not in data
    assert {"name", "maritalStatus"} <= set(data)
    assert SUBSETTED in _tags(data)
    elements = only("_elements=gender,birthDate")
    assert set(elements) == {"resourceType", "id", "meta", "gender", "birthDate"}
    assert SUBSETTED in _tags(elements)
    count = hub.bundle("Patient?_summary=count")
    assert count["total"] == 1
    assert not count.get("entry")
    assert_error(hub.get("Patient?_summary=some"), 400, "_summary")


# --- other entry points ------------------------------------------------------


def test_post_search_form(hub: Hub) -> None:
    hub.put("Patient", "a", name=[{"family": "Postman"}], gender="male")
    hub.put("Patient", "b", name=[{"family": "Postman"}], gender="female")
    hub.put("Patient", "c", name=[{"family": "Other"}], gender="male")
    r = hub.client.post("/fhir/Patient/_search", data={"family": "postman", "gender": "male"})
    assert r.status_code == 200, r.text
    assert [hub.short(e["resource"]["id"]) for e in r.json()["entry"]] == ["a"]
    r = hub.client.post("/fhir/Patient/_search?gender=female", data={"family": "postman"})
    assert r.status_code == 200, r.text
    assert [hub.short(e["resource"]["id"]) for e in r.json()["entry"]] == ["b"]
    r = hub.client.post("/fhir/Patient/_search", data={"familly": "postman"})
    assert_error(r, 400, "familly")


def test_system_search(hub: Hub) -> None:
    tag = {"tag": [{"system": "urn:t", "code": hub.uid}]}
    hub.put("Patient", "p", meta=tag, identifier=[{"value": "1"}])
    hub.put("Observation", "o", **observation(), meta=tag, identifier=[{"value": "1"}])
    hub.put("Encounter", "e", **AMBULATORY, meta=tag)
    hub.put("Patient", "p2", identifier=[{"value": "1"}])
    both = "/fhir?_type=Patient,Observation"
    assert hub.entries(f"{both}&_tag=urn:t|{hub.uid}") == [
        ("match", "Observation/o"),
        ("match", "Patient/p"),
    ]
    assert hub.entries(f"{both}&identifier=1") == [
        ("match", "Observation/o"),
        ("match", "Patient/p"),
        ("match", "Patient/p2"),
    ]
    assert hub.entries(f"/fhir?_tag=urn:t|{hub.uid}") == [
        ("match", "Encounter/e"),
        ("match", "Observation/o"),
        ("match", "Patient/p"),
    ]
    assert hub.bundle(f"{both}&identifier=1")["total"] == 3
    pages, last = _walk(hub, f"{both}&identifier=1&_count=1")
    assert [s for page in pages for s in page] == ["o", "p", "p2"]  # by type, then id
    back = []
    while "previous" in links(last):
        last = hub.bundle(relative(links(last)["previous"]))
        back += [hub.short(e["resource"]["id"]) for e in last["entry"]]
        assert len(back) < 5
    assert back == ["p", "o"]
    assert_error(hub.get(f"{both}&family=x"), 400, "family")
    assert_error(hub.get("/fhir?_type=Nonsense"), 400, "_type")


def test_compartment_search(hub: Hub) -> None:
    hub.put("Patient", "p")
    hub.put("Patient", "p2")
    hub.put("Observation", "o1", **observation("X"), subject=hub.ref("Patient", "p"))
    hub.put("Observation", "o2", **observation("Y"), performer=[hub.ref("Patient", "p")])
    hub.put("Observation", "o3", **observation("X"), subject=hub.ref("Patient", "p2"))
    hub.put(
        "Encounter",
        "e",
        **AMBULATORY,
        subject=hub.ref("Patient", "p"),
    )
    hub.put("Organization", "org")
    p = f"/fhir/Patient/{hub.id('p')}"
    assert hub.find(f"{p}/Observation") == ["o1", "o2"]
    assert hub.find(f"{p}/Observation?code=X") == ["o1"]
    assert hub.find(f"{p}/Encounter") == ["e"]
    assert hub.entries(f"{p}/*") == [
        ("match", "Encounter/e"),
        ("match", "Observation/o1"),
        ("match", "Observation/o2"),
        ("match", "Patient/p"),
    ]
    assert hub.find(f"/fhir/Patient/{hub.id('nobody')}/Observation") == []
    r = hub.get(f"{p}/Organization")
    assert r.status_code == 404, r.text
    assert_error(hub.get(f"{p}/Observation?familly=x"), 400, "familly")


def test_everything(hub: Hub) -> None:
    hub.put("Organization", "org")
    hub.put("Practitioner", "pr")
    hub.put("Patient", "p", managingOrganization=hub.ref("Organization", "org"))
    hub.put("Patient", "p2")
    hub.put(
        "Observation",
        "o1",
        **observation(),
        subject=hub.ref("Patient", "p"),
        performer=[hub.ref("Practitioner", "pr")],
    )
    hub.put("Observation", "o2", **observation(), subject=hub.ref("Patient", "p2"))
    hub.put(
        "Encounter",
        "e",
        **AMBULATORY,
        subject=hub.ref("Patient", "p"),
    )
    assert hub.entries(f"/fhir/Patient/{hub.id('p')}/$everything") == [
        ("include", "Organization/org"),
        ("include", "Practitioner/pr"),
        ("match", "Encounter/e"),
        ("match", "Observation/o1"),
        ("match", "Patient/p"),
    ]
    assert hub.get(f"/fhir/Patient/{hub.id('nobody')}/$everything").status_code == 404
    assert_error(hub.get(f"/fhir/Patient/{hub.id('p')}/$everything?family=x"), 400, "family")


def test_conditional_interactions_with_any_criteria(hub: Hub) -> None:
    c = hub.client
    hub.put("Patient", "a", name=[{"family": "Condy"}], birthDate="1980-06-01")
    body = {"resourceType": "Patient", "name": [{"family": "Condy"}], "birthDate": "1981-02-02"}
    r = c.post(
        "/fhir/Patient", json=body, headers={**FHIR, "If-None-Exist": "family=condy&birthdate=1980"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["id"] == hub.id("a")
    assert hub.find("Patient?family=condy") == ["a"]
    r = c.post(
        "/fhir/Patient", json=body, headers={**FHIR, "If-None-Exist": "family=condy&birthdate=1981"}
    )
    assert r.status_code == 201, r.text
    created = r.json()["id"]
    r = c.post("/fhir/Patient", json=body, headers={**FHIR, "If-None-Exist": "family=condy"})
    assert r.status_code == 412, r.text
    update = {"resourceType": "Patient", "name": [{"family": "Condy"}], "gender": "female"}
    r = c.put("/fhir/Patient?family=condy&birthdate=lt1981", json=update, headers=FHIR)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == hub.id("a")
    assert hub.find("Patient?gender=female") == ["a"]
    assert hub.find("Patient?birthdate=1980") == []  # the update replaced the birthDate
    assert c.delete("/fhir/Patient?birthdate=1981&family:exact=Condy").status_code == 204
    assert c.get(f"/fhir/Patient/{created}").status_code == 410
    assert hub.find("Patient?family=condy") == ["a"]
    r = c.delete("/fhir/Patient?familly=condy")
    assert_error(r, 400, "familly")
    assert hub.find("Patient?family=condy") == ["a"]


# --- errors and handling -----------------------------------------------------


def test_unknown_parameter_strict_and_lenient(hub: Hub) -> None:
    hub.put("Patient", "a", gender="male")
    hub.put("Patient", "b", gender="female")
    for headers in (None, {"Prefer": "handling=strict"}):
        r = hub.get("Patient?familly=x&gender=male", headers)
        assert_error(r, 400, "familly", "not-supported")
        assert r.json()["issue"][0]["expression"] == ["familly"]
    lenient = {"Prefer": "handling=lenient"}
    body = hub.bundle("Patient?familly=x&gender=male", lenient)
    matches = [e for e in body["entry"] if e["search"]["mode"] == "match"]
    outcomes = [e for e in body["entry"] if e["search"]["mode"] == "outcome"]
    assert [hub.short(e["resource"]["id"]) for e in matches] == ["a"]
    assert body["total"] == 1
    (outcome,) = outcomes
    assert outcome["resource"]["resourceType"] == "OperationOutcome"
    issue = outcome["resource"]["issue"][0]
    assert issue["severity"] == "warning"
    assert "familly" in issue["diagnostics"]
    self_link = links(body)["self"]
    assert "gender=male" in self_link
    assert "familly" not in self_link
    assert hub.find("Patient?name:below=x", lenient) == ["a", "b"]


MALFORMED = [
    ("Patient?birthdate=xx2024", "birthdate"),
    ("Patient?birthdate=2024-13-01", "birthdate"),
    ("Patient?birthdate=2024-02-30", "birthdate"),
    ("Patient?birthdate=gt", "birthdate"),
    ("Observation?value-quantity=5.4|a|b|c", "value-quantity"),
    ("Patient?_count=abc", "_count"),
    ("Patient?_count=-1", "_count"),
    ("Patient?_sort=nonsense", "_sort"),
    ("Patient?gender:missing=maybe", "gender:missing"),
    ("Patient?_include=Patient", "_include"),
    ("Patient?_has:Nonsense:patient:code=x", "_has:Nonsense:patient:code"),
]


def test_malformed_values_are_400_naming_the_parameter(hub: Hub) -> None:
    for query, name in MALFORMED:
        assert_error(hub.get(query), 400, name)


def test_sql_looking_values_are_just_values(hub: Hub) -> None:
    hub.put("Patient", "a", name=[{"family": "Smith"}], identifier=[{"value": "1"}])
    hub.put("Patient", "b", name=[{"family": "O'Brien"}])
    for query in (
        "family=x' OR '1'='1",
        "family:exact=x' OR '1'='1",
        "family:contains=' OR 1=1 --",
        "identifier=x' OR '1'='1",
        "_id=x' OR '1'='1",
        "general-practitioner=Practitioner/x' OR '1'='1",
        "birthdate:missing=false&family=%25",
        "family=_",
        "family:contains=%25",
    ):
        assert hub.find(f"Patient?{quote(query, safe='=&:%')}") == [], query
    assert hub.find("Patient?family=o%27b") == ["b"]
    assert hub.find("Patient?family:exact=O%27Brien") == ["b"]


def test_values_longer_than_the_index_columns(hub: Hub) -> None:
    system, value, family = "urn:" + "s" * 600, "v" * 600, "F" + "a" * 599
    hub.put(
        "Patient",
        "a",
        identifier=[{"system": system, "value": value}],
        name=[{"family": family}],
        meta={"profile": ["http://example.org/" + "p" * 600]},
    )
    hub.put("Patient", "b", identifier=[{"system": system, "value": "v"}])
    assert hub.find(f"Patient?identifier={value}") == ["a"]
    assert hub.find(f"Patient?identifier={system}|{value}") == ["a"]
    assert hub.find(f"Patient?identifier={system}|") == ["a", "b"]
    assert hub.find(f"Patient?family:exact={family}") == ["a"]
    assert hub.find(f"Patient?family={family}") == ["a"]
    assert hub.find("Patient?family=faa") == ["a"]


def test_index_follows_updates_and_deletes(lenient_hub: Hub) -> None:
    hub = lenient_hub
    hub.put(
        "Patient", "p", name=[{"family": "Old"}], identifier=[{"system": "urn:s", "value": "v1"}]
    )
    hub.put("Observation", "o", **observation(), subject=hub.ref("Patient", "p"))
    assert hub.find("Patient?family=old") == ["p"]
    hub.put(
        "Patient", "p", name=[{"family": "New"}], identifier=[{"system": "urn:s", "value": "v2"}]
    )
    assert hub.find("Patient?family=old") == []
    assert hub.find("Patient?identifier=urn:s|v1") == []
    assert hub.find("Patient?family=new") == ["p"]
    assert hub.find("Patient?identifier=urn:s|v2") == ["p"]
    assert hub.find("Patient?family:missing=true") == []
    hub.put("Patient", "p", identifier=[{"system": "urn:s", "value": "v2"}])
    assert hub.find("Patient?family:missing=true") == ["p"]
    assert hub.find("Observation?subject:Patient.identifier=v2") == ["o"]
    hub.delete("Patient", "p")
    assert hub.find("Patient?identifier=urn:s|v2") == []
    assert hub.find(f"Patient?_id={hub.id('p')}") == []
    assert hub.find("Patient?family:missing=true") == []
    assert hub.find("Observation?subject:Patient.identifier=v2") == []
    assert hub.entries("Observation?_include=Observation:subject") == [("match", "Observation/o")]
    assert hub.find("Patient?_has:Observation:subject:code=x") == []
    hub.put("Patient", "p", name=[{"family": "Again"}])
    assert hub.find("Patient?family=new") == []
    assert hub.find("Patient?family=again") == ["p"]
    hub.delete("Observation", "o")
    assert hub.find(f"Observation?subject=Patient/{hub.id('p')}") == []
    assert hub.find("Patient?_has:Observation:subject:code=x") == []
