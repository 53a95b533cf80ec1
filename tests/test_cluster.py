"""Two API processes and two Celery workers on one PostgreSQL, fed at once by the CSV feed
(through both APIs) and by REST writes (to both APIs): nothing lost, nothing duplicated,
each patient's rows applied in the order they were received (docs/operations.md)."""

from __future__ import annotations

import os
import threading
from typing import Any

import httpx
import pytest
from ingest_fixtures import PATIENT_COLUMNS, csv_bytes, patient_row, rid
from live_server import free_port, wait_ready
from test_ingest_celery import DEADLINE, Hub, hub  # noqa: F401  (the fixture)

from hub.ingest.messages import DONE

pytestmark = [pytest.mark.celery, pytest.mark.postgres]

ROWS = int(os.environ.get("HUB_TEST_CLUSTER_ROWS", "400"))
CORRECTED = range(0, ROWS, 10)
REST_PATIENTS = 40  # each created conditionally through both APIs at once


def _ended(cluster: Hub) -> str | None:
    ended = [p for p in cluster.processes if p.popen.poll() is not None]
    return "\n".join(p.tail() for p in ended) or None


def _post_csv(base: str, rows: list[dict[str, str]]) -> dict[str, Any]:
    answer = httpx.post(
        f"{base}/ingest/csv",
        params={"mapping": "synthea-patients"},
        content=csv_bytes(PATIENT_COLUMNS, rows),
        headers={"Content-Type": "text/csv"},
        timeout=60,
    )
    assert answer.status_code == 202, answer.text
    return dict(answer.json())


def _rest_writes(bases: list[str], errors: list[str]) -> None:
    """Each patient created by both APIs at once, conditionally (one must win), then
    updated through the other."""
    fhir = {"Content-Type": "application/fhir+json"}
    with httpx.Client(timeout=30) as client:
        for i in range(REST_PATIENTS):
            system, value = "urn:test:rest", f"rest-{i}"
            body = {
                "resourceType": "Patient",
                "identifier": [{"system": system, "value": value}],
                "name": [{"family": "Rest"}],
            }
            answers: list[httpx.Response] = []

            def create(
                base: str,
                body: dict[str, Any] = body,
                value: str = value,
                answers: list[httpx.Response] = answers,
            ) -> None:
                answers.append(
                    client.post(
                        f"{base}/fhir/Patient",
                        json=body,
                        headers={**fhir, "If-None-Exist": f"identifier=urn:test:rest|{value}"},
                    )
                )

            threads = [threading.Thread(target=create, args=(b,)) for b in bases]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            codes = sorted(a.status_code for a in answers)
            if codes not in ([200, 201], [201, 201]) or len({a.json()["id"] for a in answers}) != 1:
                errors.append(f"{value}: {codes} {[a.text[:200] for a in answers]}")
                continue
            patient = answers[0].json()
            patient["name"] = [{"family": "RestUpdated"}]
            updated = client.put(
                f"{bases[1]}/fhir/Patient/{patient['id']}", json=patient, headers=fhir
            )
            if updated.status_code != 200:
                errors.append(f"{value} update: {updated.status_code} {updated.text[:200]}")


def test_two_apis_and_two_workers_keep_every_message_once_and_in_order(
    hub: Hub,  # noqa: F811
) -> None:
    ports = [free_port(), free_port()]
    for n, port in enumerate(ports):
        hub.start(f"api-{n}", ["serve", "--port", str(port), "--no-mllp"])
    for n in range(2):
        hub.start(f"worker-{n}", ["worker", "--concurrency", "2"])
    hub.start("beat", ["beat"])
    bases = [f"http://127.0.0.1:{p}" for p in ports]
    for base in bases:
        wait_ready(base, lambda: _ended(hub))

    rows = [patient_row(f"cluster-{i:05d}", FIRST=f"Given{i}") for i in range(ROWS)]
    corrections = [
        patient_row(f"cluster-{i:05d}", FIRST=f"Given{i}", LAST="Corrected") for i in CORRECTED
    ]
    errors: list[str] = []
    rest = threading.Thread(target=_rest_writes, args=(bases, errors))
    rest.start()
    halves = [rows[: ROWS // 2], rows[ROWS // 2 :]]
    feeds = [
        threading.Thread(target=_post_csv, args=(b, h)) for b, h in zip(bases, halves, strict=True)
    ]
    for t in feeds:
        t.start()
    for t in feeds:
        t.join()
    # Received after every first row: each correction must end up the patient's last word.
    _post_csv(bases[1], corrections[: len(corrections) // 2])
    _post_csv(bases[0], corrections[len(corrections) // 2 :])
    rest.join(timeout=DEADLINE)
    assert not errors, errors

    messages = ROWS + len(corrections)
    counts = hub.wait(lambda c: c.get(DONE, 0) == messages, DEADLINE, "every row to be done")
    assert counts == {DONE: messages}

    families: dict[str, str] = {}
    url: str | None = f"{bases[0]}/fhir/Patient?_count=1000&_elements=name"
    while url:
        page = httpx.get(url, timeout=30).json()
        families.update(
            {e["resource"]["id"]: e["resource"]["name"][0]["family"] for e in page["entry"]}
        )
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    provenances = httpx.get(
        f"{bases[1]}/fhir/Provenance", params={"_summary": "count"}, timeout=30
    ).json()["total"]
    # Nothing lost, nothing twice: one Patient per CSV key and per REST identifier.
    assert len(families) == ROWS + REST_PATIENTS
    assert provenances == messages
    for i in range(ROWS):
        expected = "Corrected" if i in CORRECTED else patient_row(f"cluster-{i:05d}")["LAST"]
        assert families[rid("Patient", f"cluster-{i:05d}")] == expected, i
    assert sorted(f for f in families.values() if f.startswith("Rest")) == (
        ["RestUpdated"] * REST_PATIENTS
    )
    # Both APIs took feed rows, both workers processed some.
    for name in ("worker-0", "worker-1"):
        log = next(p for p in hub.processes if p.name == name).log_path.read_text()
        assert "succeeded" in log, f"{name} processed nothing"
