"""Referential integrity over REST: the 400 and 409 answers, for requests and Bundles.

Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

from conftest import MIGRATIONS
from fastapi.testclient import TestClient
from sqlalchemy import select

from hub.interactions.context import Context
from hub.store.migrate import downgrade, upgrade
from hub.store.schema import outbound_reference

FHIR = {"Content-Type": "application/fhir+json"}
BASE = "http://hub.test/fhir"


def patient(pid: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": "Doe"}]}


def observation(subject: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "weight"},
        "subject": {"reference": subject},
        **extra,
    }


def transaction(client: TestClient, *entries: dict[str, Any]) -> Any:
    body = {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}
    return client.post("/fhir", json=body)


def test_a_dangling_reference_is_400_naming_the_element(client: TestClient, uid: str) -> None:
    client.put(f"/fhir/Patient/{uid}", json=patient(uid), headers=FHIR)
    body = observation(
        f"Patient/{uid}",
        performer=[{"reference": f"Patient/{uid}"}, {"reference": f"Practitioner/{uid}"}],
    )
    r = client.post("/fhir/Observation", json=body, headers=FHIR)
    assert r.status_code == 400, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    [issue] = outcome["issue"]
    assert issue["severity"] == "error" and issue["code"] == "not-found"
    assert issue["expression"] == ["Observation.performer[1]"]
    assert f"Practitioner/{uid}" in issue["diagnostics"]
    # PUT and an absolute reference with the server's base alike.
    r = client.put(
        f"/fhir/Observation/o{uid}",
        json={**observation(f"{BASE}/Patient/no{uid}"), "id": f"o{uid}"},
        headers=FHIR,
    )
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["Observation.subject"]


def test_a_dangling_reference_in_a_transaction_names_the_entry(
    client: TestClient, uid: str
) -> None:
    r = transaction(
        client,
        {"request": {"method": "PUT", "url": f"Patient/{uid}"}, "resource": patient(uid)},
        {
            "request": {"method": "POST", "url": "Observation"},
            "resource": observation(f"Patient/no{uid}"),
        },
    )
    assert r.status_code == 400, r.text
    [issue] = r.json()["issue"]
    assert issue["expression"] == ["Bundle.entry[1].resource.subject"]
    assert issue["diagnostics"].startswith("Bundle.entry[1]: ")
    assert client.get(f"/fhir/Patient/{uid}").status_code == 404  # nothing kept


def test_a_transaction_may_reference_what_it_writes_in_any_order(
    client: TestClient, uid: str
) -> None:
    r = transaction(
        client,
        {
            "request": {"method": "POST", "url": "Observation"},
            "resource": observation(f"Patient/{uid}"),
        },
        {"request": {"method": "PUT", "url": f"Patient/{uid}"}, "resource": patient(uid)},
    )
    assert r.status_code == 200, r.text


def test_deleting_a_referenced_resource_is_409_naming_the_referrers(
    client: TestClient, uid: str
) -> None:
    client.put(f"/fhir/Patient/{uid}", json=patient(uid), headers=FHIR)
    ids = []
    for _ in range(2):
        r = client.post("/fhir/Observation", json=observation(f"Patient/{uid}"), headers=FHIR)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    r = client.delete(f"/fhir/Patient/{uid}")
    assert r.status_code == 409, r.text
    [issue] = r.json()["issue"]
    assert issue["code"] == "conflict"
    assert all(f"Observation/{i}" in issue["diagnostics"] for i in ids)
    r = client.delete(f"/fhir/Patient?_id={uid}")
    assert r.status_code == 409
    r = transaction(client, {"request": {"method": "DELETE", "url": f"Patient/{uid}"}})
    assert r.status_code == 409
    assert r.json()["issue"][0]["diagnostics"].startswith("Bundle.entry[0]: ")
    assert client.get(f"/fhir/Patient/{uid}").status_code == 200
    # Deleting the referrers and the target together is fine.
    r = transaction(
        client,
        *({"request": {"method": "DELETE", "url": f"Observation/{i}"}} for i in ids),
        {"request": {"method": "DELETE", "url": f"Patient/{uid}"}},
    )
    assert r.status_code == 200, r.text
    assert client.get(f"/fhir/Patient/{uid}").status_code == 410


def test_the_migration_fills_the_references_of_stored_resources(
    client: TestClient, ctx: Context, database_url: str, uid: str
) -> None:
    engine = ctx.repo.engine  # type: ignore[attr-defined]

    def rows() -> list[tuple[str, ...]]:
        t = outbound_reference.c
        with engine.connect() as conn:
            return sorted(
                tuple(r)
                for r in conn.execute(select(t.res_type, t.res_id, t.target_type, t.target_id))
            )

    client.put(f"/fhir/Patient/{uid}", json=patient(uid), headers=FHIR)
    body = {**observation(f"Patient/{uid}"), "id": f"o{uid}"}
    assert client.put(f"/fhir/Observation/o{uid}", json=body, headers=FHIR).status_code == 201
    written = rows()
    assert written == [("Observation", f"o{uid}", "Patient", uid)]
    downgrade(database_url, MIGRATIONS, "0013")
    upgrade(database_url, MIGRATIONS)
    assert rows() == written


def test_an_update_leaves_the_outbound_references_of_what_it_stores(
    client: TestClient, ctx: Context, uid: str
) -> None:
    # Only the rows that differ change (kept, added, dropped), and a delete leaves none.
    engine = ctx.repo.engine  # type: ignore[attr-defined]

    def rows() -> list[tuple[str, str]]:
        t = outbound_reference.c
        with engine.connect() as conn:
            found = conn.execute(
                select(t.target_type, t.target_id).where(
                    t.res_type == "Observation", t.res_id == f"o{uid}"
                )
            )
            return sorted((r[0], r[1]) for r in found)

    for pid in ("a", "b", "c"):
        client.put(f"/fhir/Patient/{pid}{uid}", json=patient(f"{pid}{uid}"), headers=FHIR)

    def put(subject: str, *performers: str) -> None:
        body = {
            **observation(f"Patient/{subject}{uid}"),
            "id": f"o{uid}",
            "performer": [{"reference": f"Patient/{p}{uid}"} for p in performers],
        }
        r = client.put(f"/fhir/Observation/o{uid}", json=body, headers=FHIR)
        assert r.status_code in (200, 201), r.text

    put("a", "b")
    assert rows() == [("Patient", f"a{uid}"), ("Patient", f"b{uid}")]
    put("a", "b", "b")  # a new version, the same targets
    assert rows() == [("Patient", f"a{uid}"), ("Patient", f"b{uid}")]
    put("a", "c")
    assert rows() == [("Patient", f"a{uid}"), ("Patient", f"c{uid}")]
    put("c")
    assert rows() == [("Patient", f"c{uid}")]
    assert client.delete(f"/fhir/Patient/a{uid}").status_code == 204  # no longer held
    assert client.delete(f"/fhir/Patient/c{uid}").status_code == 409
    assert client.delete(f"/fhir/Observation/o{uid}").status_code == 204
    assert rows() == []
    assert client.delete(f"/fhir/Patient/c{uid}").status_code == 204
