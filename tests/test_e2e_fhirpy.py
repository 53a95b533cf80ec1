"""End to end: a real `hub serve` process driven by real FHIR client libraries.

The server runs as a subprocess of the installed `hub` console script (uvicorn,
the app factory, settings from HUB_* variables and options), once on a SQLite
file migrated by `hub db upgrade` and once on PostgreSQL migrated by
`hub serve --migrate`. The fhirpy client (and smart-on-fhir's fhirclient) then
talks HTTP to it, so content types, status codes, Location/ETag headers,
Bundle links and error bodies are checked as a third-party client sees them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome, ResourceNotFound
from live_server import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = ROOT / "alembic"
START_TIMEOUT = 60.0
FHIR_JSON = "application/fhir+json"


@dataclass
class Server:
    base: str  # http://127.0.0.1:PORT/fhir
    root: str  # http://127.0.0.1:PORT
    backend: str
    log: Path


def _hub_command() -> str:
    """The `hub` script of the interpreter running the tests (the project venv)."""
    candidate = Path(sys.executable).parent / "hub"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("hub")
    if found is None:
        pytest.fail("the `hub` console script is not installed (pip install -e .)")
    return found


def _clean_env(workdir: Path) -> dict[str, str]:
    """The test's environment without HUB_* values, which would override the options."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env["HUB_MIGRATIONS_DIR"] = str(MIGRATIONS)
    env["HUB_LOG_LEVEL"] = "warning"
    env["HUB_MLLP_ENABLED"] = "false"  # port 2575 is not the test's to take
    env["PYTHONUNBUFFERED"] = "1"
    env["HOME"] = str(workdir)
    return env


def _log_text(log: Path) -> str:
    return log.read_text(errors="replace") if log.exists() else "(no output)"


def _wait_healthy(proc: subprocess.Popen[bytes], root: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last_error = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"`hub serve` exited with code {proc.returncode} before answering /healthz.\n"
                f"--- server output ---\n{_log_text(log)}"
            )
        try:
            r = httpx.get(f"{root}/healthz", timeout=2.0)
            if r.status_code == 200 and r.json() == {"status": "ok"}:
                return
            last_error = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as e:
            last_error = repr(e)
        time.sleep(0.2)
    pytest.fail(
        f"`hub serve` did not answer /healthz within {START_TIMEOUT}s (last: {last_error}).\n"
        f"--- server output ---\n{_log_text(log)}"
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp(f"e2e_{request.param}")
    env = _clean_env(workdir)
    hub = _hub_command()
    command = [hub, "serve", "--host", "127.0.0.1"]
    if request.param == "sqlite":
        url = f"sqlite:///{workdir / 'hub.db'}"
        migrated = subprocess.run(
            [hub, "db", "upgrade", "--database-url", url],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert migrated.returncode == 0, (
            f"`hub db upgrade` failed:\n{migrated.stdout}\n{migrated.stderr}"
        )
        assert "is at revision head" in migrated.stderr
    else:
        url = str(request.getfixturevalue("postgres_url"))
        command.append("--migrate")  # already migrated: also checks that it is idempotent
    port = free_port()
    command += ["--port", str(port), "--database-url", url]
    log = workdir / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
    root = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, root, log)
        yield Server(base=f"{root}/fhir", root=root, backend=request.param, log=log)
    finally:
        _stop(proc)
        # Shown by pytest when a test of this module failed.
        print(f"--- hub serve ({request.param}) output ---\n{_log_text(log)}")


@pytest.fixture()
def fhir(server: Server) -> SyncFHIRClient:
    return SyncFHIRClient(server.base, requests_config={"timeout": 30})


def _patient_ids(resources: list) -> list[str]:
    return [r.id for r in resources]


def test_banner_and_capability_statement(server: Server, fhir: SyncFHIRClient) -> None:
    assert f"fhir-hub serving {server.base}" in _log_text(server.log)
    cs = fhir.execute("metadata", method="get")
    assert cs["resourceType"] == "CapabilityStatement"
    assert cs["fhirVersion"].startswith("4.0")
    r = httpx.get(f"{server.base}/metadata", headers={"Accept": FHIR_JSON})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(FHIR_JSON)


def test_patient_lifecycle(server: Server, fhir: SyncFHIRClient, uid: str) -> None:
    system = f"urn:e2e:{server.backend}:{uid}"
    patient = fhir.resource(
        "Patient",
        identifier=[{"system": system, "value": "mrn-1"}],
        name=[{"family": f"Doe-{uid}", "given": ["Jane"]}],
        gender="unknown",
        birthDate="1980-02-29",
    )

    # create: POST assigns an id and version 1, and fhirpy adopts the returned body
    patient.save()
    pid = patient.id
    assert pid
    assert patient["meta"]["versionId"] == "1"
    assert patient["meta"]["lastUpdated"]

    # read
    read = fhir.reference("Patient", pid).to_resource()
    assert read.id == pid
    assert read["name"][0]["family"] == f"Doe-{uid}"
    assert read["birthDate"] == "1980-02-29"
    assert read["meta"]["versionId"] == "1"
    assert fhir.get("Patient", pid)["identifier"] == [{"system": system, "value": "mrn-1"}]

    # update: PUT of the changed resource makes version 2
    read["gender"] = "female"
    read.save()
    assert read["meta"]["versionId"] == "2"
    again = fhir.reference("Patient", pid).to_resource()
    assert again["gender"] == "female"
    assert again["meta"]["versionId"] == "2"

    # refresh() sends If-None-Match with the current version: 304 keeps the resource
    again.refresh()
    assert again["gender"] == "female"

    # search by _id and by identifier (system|value, and value alone)
    by_id = fhir.resources("Patient").search(_id=pid).fetch()
    assert _patient_ids(by_id) == [pid]
    assert by_id[0]["gender"] == "female"
    by_token = fhir.resources("Patient").search(identifier=f"{system}|mrn-1").fetch()
    assert _patient_ids(by_token) == [pid]
    assert fhir.resources("Patient").search(identifier=f"{system}|other").fetch() == []
    assert fhir.resources("Patient").search(identifier=f"{system}|mrn-1").get().id == pid

    # delete: the later read is refused (410 Gone), search no longer finds it
    read.delete()
    with pytest.raises(ResourceNotFound):
        fhir.reference("Patient", pid).to_resource()
    gone = httpx.get(f"{server.base}/Patient/{pid}", headers={"Accept": FHIR_JSON})
    assert gone.status_code == 410
    assert gone.json()["resourceType"] == "OperationOutcome"
    assert fhir.resources("Patient").search(_id=pid).fetch() == []
    assert fhir.resources("Patient").search(identifier=f"{system}|mrn-1").fetch() == []

    # instance history: newest first, the deletion included, every version kept
    history = fhir.execute(f"Patient/{pid}/_history", method="get")
    assert history["resourceType"] == "Bundle"
    assert history["type"] == "history"
    assert history["total"] == 3
    entries = history["entry"]
    assert [e["request"]["method"] for e in entries] == ["DELETE", "PUT", "POST"]
    assert [e["response"]["etag"] for e in entries] == ['W/"3"', 'W/"2"', 'W/"1"']
    assert "resource" not in entries[0]
    assert entries[1]["resource"]["gender"] == "female"
    assert entries[2]["resource"]["gender"] == "unknown"
    assert all(e["fullUrl"].startswith(f"{server.base}/Patient/{pid}") for e in entries)

    # vread of an old version still works after the delete
    v1 = fhir.execute(f"Patient/{pid}/_history/1", method="get")
    assert v1["meta"]["versionId"] == "1"
    assert v1["gender"] == "unknown"


def test_search_paging_follows_next_links(server: Server, fhir: SyncFHIRClient, uid: str) -> None:
    system = f"urn:e2e:paging:{server.backend}:{uid}"
    created = []
    for n in range(5):
        p = fhir.resource("Patient", identifier=[{"system": system, "value": str(n)}])
        p.save()
        created.append(p.id)
    search = fhir.resources("Patient").search(identifier=f"{system}|").limit(2)
    first_page = search.fetch()
    assert len(first_page) == 2
    # fetch_all follows Bundle.link[next] (absolute URLs under the client's base)
    assert sorted(_patient_ids(search.fetch_all())) == sorted(created)


def test_errors_reach_the_client_as_operation_outcomes(fhir: SyncFHIRClient) -> None:
    with pytest.raises(ResourceNotFound):
        fhir.reference("Patient", "does-not-exist").to_resource()
    with pytest.raises(OperationOutcome) as raised:
        fhir.resources("Patient").search(nonsense="x").fetch()
    assert raised.value.resource["resourceType"] == "OperationOutcome"
    assert raised.value.resource["issue"][0]["severity"] in ("error", "fatal")


def test_fhirclient_models_read_and_search(server: Server, fhir: SyncFHIRClient, uid: str) -> None:
    fhirclient_server = pytest.importorskip("fhirclient.server")
    from fhirclient.models.patient import Patient

    system = f"urn:e2e:fhirclient:{server.backend}:{uid}"
    smart = fhirclient_server.FHIRServer(None, base_uri=server.base)

    # fhirclient parses strictly: an unknown or malformed element in our output would raise
    made = Patient(
        {
            "identifier": [{"system": system, "value": "1"}],
            "name": [{"family": "Smart", "given": ["Client"]}],
            "active": True,
        }
    )
    answer = made.create(smart)
    assert answer is not None and answer["resourceType"] == "Patient"
    pid = answer["id"]

    read = Patient.read(pid, smart)
    assert read.id == pid
    assert read.name[0].family == "Smart"
    assert read.active is True
    assert read.meta.versionId == "1"
    assert read.meta.lastUpdated is not None

    read.active = False
    read.update(smart)
    assert Patient.read(pid, smart).meta.versionId == "2"

    found = list(Patient.where({"identifier": f"{system}|1"}).perform_resources_iter(smart))
    assert [p.id for p in found] == [pid]

    # fhirpy sees what fhirclient wrote
    assert fhir.get("Patient", pid)["active"] is False


def test_fhirpy_search_chaining_reverse_chaining_and_paging(
    server: Server, fhir: SyncFHIRClient, uid: str
) -> None:
    """What an app does: filter, chain through references, include, sort and page."""
    family = f"Chain{uid}"
    patients = []
    for i, given in enumerate(["Ada", "Bea", "Cy"]):
        p = fhir.resource(
            "Patient",
            name=[{"family": family, "given": [given]}],
            birthDate=f"198{i}-01-01",
            identifier=[{"system": "urn:e2e", "value": uid}],
        )
        p.save()
        patients.append(p)
    codes = {"Ada": "8867-4", "Bea": "8310-5", "Cy": "8867-4"}
    observations = []
    for p in patients:
        given = p["name"][0]["given"][0]
        for day in range(1, 4):
            o = fhir.resource(
                "Observation",
                status="final",
                code={"coding": [{"system": "http://loinc.org", "code": codes[given]}]},
                subject={"reference": f"Patient/{p.id}"},
                effectiveDateTime=f"2024-03-0{day}T10:00:00Z",
                valueQuantity={
                    "value": 60 + day,
                    "system": "http://unitsofmeasure.org",
                    "code": "/min",
                },
            )
            o.save()
            observations.append(o)

    # chaining: observations whose subject is a patient with that family name
    chained = fhir.resources("Observation").search(**{"subject:Patient.family": family}).fetch_all()
    assert {o.id for o in chained} == {o.id for o in observations}
    # chaining plus a token and a date prefix
    heart = (
        fhir.resources("Observation")
        .search(**{"subject:Patient.name": family, "code": "http://loinc.org|8867-4"})
        .search(date__ge="2024-03-02")
        .fetch_all()
    )
    assert len(heart) == 4
    # reverse chaining: patients having a heart-rate observation
    having = (
        fhir.resources("Patient")
        .search(**{"_has:Observation:patient:code": "8867-4", "family": family})
        .fetch_all()
    )
    assert sorted(p["name"][0]["given"][0] for p in having) == ["Ada", "Cy"]
    # _include brings the subjects along
    bundle = fhir.execute(
        "Observation",
        method="get",
        params={
            "subject:Patient.family": family,
            "_include": "Observation:subject",
            "_count": "50",
        },
    )
    modes = {(e["resource"]["resourceType"], e["search"]["mode"]) for e in bundle["entry"]}
    assert modes == {("Observation", "match"), ("Patient", "include")}
    # sort and page through every observation of the three patients, two at a time
    paged = (
        fhir.resources("Observation")
        .search(**{"subject:Patient.family": family})
        .sort("-date", "_id")
        .limit(2)
    )
    seen = [o.id for o in paged.fetch_all()]
    assert len(seen) == len(set(seen)) == 9
    dates = [o["effectiveDateTime"] for o in paged.fetch_all()]
    assert dates == sorted(dates, reverse=True)
    # the count fhirpy asks for
    assert fhir.resources("Patient").search(family=family).count() == 3
