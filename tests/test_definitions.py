"""Search parameters as data: `hub definitions load`, pending parameters, reindex jobs.

A SearchParameter stored through REST or `hub definitions load` is pending:
writes index it at once, searches refuse it (400) until a reindex job (the
`hub reindex` command, `POST /fhir/$reindex`, or `hub.parameters.reindex`) has
extracted it from the resources stored before. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import select

from hub.api import create_app
from hub.cli import main
from hub.interactions.context import Context
from hub.interactions.definitions import load_definitions
from hub.parameters import reindex as jobs
from hub.parameters.stored import INDEXED, PENDING, RegistryHolder
from hub.search.registry import bundle_resources
from hub.settings import Settings, get_settings
from hub.store import SqlRepository
from hub.store.schema import reindex_jobs, search_param_state, search_string

# The official R4 SearchParameter Bundle (search-parameters.json of the R4 definitions), shipped.
OFFICIAL = Path(__file__).resolve().parents[1] / "hub" / "search" / "r4-search-parameters.json"
FHIR = {"Content-Type": "application/fhir+json"}
NICKNAME: dict[str, Any] = {
    "resourceType": "SearchParameter",
    "url": "http://example.org/fhir/SearchParameter/Patient-nickname",
    "name": "nickname",
    "status": "active",
    "description": "The nicknames of a patient",
    "code": "nickname",
    "base": ["Patient"],
    "type": "string",
    "expression": "Patient.name.where(use='nickname').given",
}


@pytest.fixture()
def settings(database_url: str) -> Settings:
    # Registries look at the store on every use, so a change made elsewhere shows at once.
    return Settings(
        database_url=database_url,
        public_base_url="http://hub.test/fhir",
        registry_refresh_seconds=0,
    )


@pytest.fixture(autouse=True)
def clean_state(repo: SqlRepository) -> SqlRepository:
    with repo.engine.begin() as conn:
        conn.execute(search_param_state.delete())
        conn.execute(reindex_jobs.delete())
    return repo


@pytest.fixture()
def cli(settings: Settings) -> Iterator[CliRunner]:
    yield CliRunner(
        env={"HUB_DATABASE_URL": settings.database_url, "HUB_REGISTRY_REFRESH_SECONDS": "0"}
    )
    get_settings.cache_clear()


def patient(client: TestClient, nickname: str | None = None) -> str:
    body: dict[str, Any] = {"resourceType": "Patient", "name": [{"family": "Smith"}]}
    if nickname is not None:
        body["name"].append({"use": "nickname", "given": [nickname]})
    r = client.post("/fhir/Patient", json=body, headers=FHIR)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def create_nickname(client: TestClient, **changes: Any) -> dict[str, Any]:
    r = client.post("/fhir/SearchParameter", json={**NICKNAME, **changes}, headers=FHIR)
    assert r.status_code == 201, r.text
    return dict(r.json())


def found(client: TestClient, query: str) -> list[str]:
    r = client.get(f"/fhir/{query}")
    assert r.status_code == 200, r.text
    return sorted(e["resource"]["id"] for e in r.json().get("entry", []))


def refused(client: TestClient, query: str, code: str) -> None:
    r = client.get(f"/fhir/{query}")
    assert r.status_code == 400, r.text
    assert code in r.json()["issue"][0]["diagnostics"]


def parameters(body: dict[str, Any]) -> dict[str, Any]:
    assert body["resourceType"] == "Parameters"
    out: dict[str, Any] = {}
    for p in body["parameter"]:
        value = next(v for k, v in p.items() if k.startswith("value"))
        if p["name"] == "type":
            out.setdefault("type", []).append(value)
        else:
            out[p["name"]] = value
    return out


def run_reindex(client: TestClient, query: str = "", **kwargs: Any) -> dict[str, Any]:
    """POST $reindex, then poll its status until the job ends."""
    r = client.post(f"/fhir/$reindex{query}", **kwargs)
    assert r.status_code == 202, r.text
    location = r.headers["Content-Location"]
    assert "/fhir/$reindex/" in location
    deadline = time.monotonic() + 60
    while True:
        r = client.get(urlsplit(location).path)
        assert r.status_code == 200, r.text
        status = parameters(r.json())
        if status["status"] in ("completed", "failed") or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def index_values(ctx: Context, param: str) -> dict[str, list[str]]:
    with ctx.repo.snapshot() as tx:
        rows = tx.rows(
            select(search_string.c.res_id, search_string.c.exact).where(
                search_string.c.res_type == "Patient", search_string.c.param == param
            )
        )
    out: dict[str, list[str]] = {}
    for row in rows:
        out.setdefault(row.res_id, []).append(row.exact)
    return out


def states(ctx: Context) -> dict[str, str]:
    with ctx.repo.snapshot() as tx:
        rows = tx.rows(select(search_param_state.c.url, search_param_state.c.state))
    return {row.url: row.state for row in rows}


# --- a SearchParameter created through REST --------------------------------------------------


def test_a_new_parameter_is_refused_until_reindexed_then_found(
    client: TestClient, ctx: Context
) -> None:
    before = patient(client, "Bob")
    patient(client)
    create_nickname(client)
    assert states(ctx) == {NICKNAME["url"]: PENDING}
    refused(client, "Patient?nickname=Bob", "nickname")
    # Written while the parameter is pending: indexed for it at once.
    during = patient(client, "Bobby")
    assert index_values(ctx, "nickname") == {during: ["Bobby"]}

    status = run_reindex(client)
    assert status["status"] == "completed", status
    assert status["type"] == ["Patient"]
    assert status["total"] == status["done"] == 3
    assert status["started"] <= status["finished"]
    assert states(ctx) == {NICKNAME["url"]: INDEXED}
    assert found(client, "Patient?nickname=Bob") == sorted([before, during])
    assert found(client, "Patient?nickname:exact=Bob") == [before]
    after = patient(client, "Bob")
    assert found(client, "Patient?nickname:exact=Bob") == sorted([before, after])
    # The CapabilityStatement lists it, with its definition.
    r = client.get("/fhir/metadata")
    (patient_statement,) = [x for x in r.json()["rest"][0]["resource"] if x["type"] == "Patient"]
    listed = {p["name"]: p for p in patient_statement["searchParam"]}
    assert listed["nickname"]["definition"] == NICKNAME["url"]


def test_reindex_takes_types_as_a_parameter_or_in_a_parameters_body(
    client: TestClient, ctx: Context
) -> None:
    patient(client, "Al")
    create_nickname(client)
    # Observation alone does not cover the parameter: it stays pending.
    status = run_reindex(client, "?_type=Observation")
    assert (status["status"], status["type"], status["total"]) == ("completed", ["Observation"], 0)
    refused(client, "Patient?nickname=Al", "nickname")
    body = {
        "resourceType": "Parameters",
        "parameter": [{"name": "type", "valueCode": "Patient"}],
    }
    status = run_reindex(client, json=body, headers=FHIR)
    assert (status["status"], status["type"], status["done"]) == ("completed", ["Patient"], 1)
    assert len(found(client, "Patient?nickname=Al")) == 1


def test_reindex_errors(client: TestClient) -> None:
    r = client.post("/fhir/$reindex?_type=Unicorn")
    assert r.status_code == 400
    assert "Unicorn" in r.json()["issue"][0]["diagnostics"]
    r = client.get("/fhir/$reindex/no-such-job")
    assert r.status_code == 404
    r = client.get("/fhir/$reindex")
    assert r.status_code == 400
    r = client.post("/fhir/$reindex", json={"resourceType": "Patient"}, headers=FHIR)
    assert r.status_code == 400


def test_status_also_answers_with_the_job_parameter(client: TestClient) -> None:
    status = run_reindex(client)
    assert (status["status"], status["total"], status["done"]) == ("completed", 0, 0)
    r = client.get(f"/fhir/$reindex?job={status['job']}")
    assert r.status_code == 200
    assert parameters(r.json())["job"] == status["job"]


def test_a_changed_definition_is_pending_again_an_unchanged_one_is_not(
    client: TestClient, ctx: Context
) -> None:
    pid = patient(client, "Bob")
    sp = create_nickname(client)
    assert run_reindex(client)["status"] == "completed"
    # A description is not part of what the index holds: still searchable.
    r = client.put(
        f"/fhir/SearchParameter/{sp['id']}",
        json={**NICKNAME, "id": sp["id"], "description": "Nicknames"},
        headers=FHIR,
    )
    assert r.status_code == 200, r.text
    assert states(ctx) == {NICKNAME["url"]: INDEXED}
    assert found(client, "Patient?nickname=Bob") == [pid]
    # A new expression is: refused until reindexed, then answers by the new definition.
    changed = {**NICKNAME, "id": sp["id"], "expression": "Patient.name.family"}
    r = client.put(f"/fhir/SearchParameter/{sp['id']}", json=changed, headers=FHIR)
    assert r.status_code == 200, r.text
    assert states(ctx) == {NICKNAME["url"]: PENDING}
    refused(client, "Patient?nickname=Bob", "nickname")
    assert run_reindex(client)["status"] == "completed"
    assert found(client, "Patient?nickname=Bob") == []
    assert found(client, "Patient?nickname=Smith") == [pid]


def test_a_deleted_parameter_is_no_longer_searchable(client: TestClient, ctx: Context) -> None:
    patient(client, "Bob")
    sp = create_nickname(client)
    assert run_reindex(client)["status"] == "completed"
    assert len(found(client, "Patient?nickname=Bob")) == 1
    assert client.delete(f"/fhir/SearchParameter/{sp['id']}").status_code == 204
    assert states(ctx) == {}
    refused(client, "Patient?nickname=Bob", "nickname")


def test_an_expression_failing_on_a_resource_does_not_stop_its_writes(
    client: TestClient, ctx: Context
) -> None:
    create_nickname(client, expression="Patient.name.select(given.first() + 1)")
    pid = patient(client, "Bob")
    assert index_values(ctx, "nickname") == {}
    assert client.get(f"/fhir/Patient/{pid}").status_code == 200


# --- the job as a function, and the command -------------------------------------------------


def test_job_function_reports_progress_and_marks_only_what_it_covered(
    client: TestClient, ctx: Context
) -> None:
    ids = [patient(client, f"N{i}") for i in range(7)]
    create_nickname(client)
    seen: list[tuple[int, int]] = []
    job = jobs.reindex(
        ctx.repo, ctx.registries.params, batch=3, progress=lambda d, t: seen.append((d, t))
    )
    assert (job.status, job.resource_types, job.total, job.done) == (
        "completed",
        ("Patient",),
        7,
        7,
    )
    assert seen == [(0, 7), (3, 7), (6, 7), (7, 7)]
    assert job.finished is not None and job.started <= job.finished
    assert jobs.status(ctx.repo, job.id) == job
    assert found(client, "Patient?nickname=N4") == [ids[4]]
    # Nothing pending: a job without types has nothing to do.
    job = jobs.reindex(ctx.repo, ctx.registries.params)
    assert (job.status, job.resource_types, job.total) == ("completed", (), 0)


def test_a_stale_process_writing_during_the_job_is_caught_up(
    client: TestClient, ctx: Context, settings: Settings
) -> None:
    # Another process whose registries predate the parameter (it has not looked yet).
    stale = Context(repo=ctx.repo, registries=RegistryHolder(ctx.repo), settings=settings)
    with TestClient(create_app(settings, stale)) as other:
        patient(client, "Early")
        create_nickname(client)
        job_id = jobs.start(ctx.repo)
        worker = threading.Thread(
            target=jobs.run,
            args=(ctx.repo, ctx.registries.params, job_id),
            kwargs={"settle_seconds": 4.0},
        )
        worker.start()
        deadline = time.monotonic() + 30
        while True:  # the first pass is done; the job waits for every process to settle
            job = jobs.status(ctx.repo, job_id)
            assert job is not None
            if (job.status, job.done) == ("running", job.total) or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        late = patient(other, "Late")
        assert late not in index_values(ctx, "nickname")  # written without the parameter
        worker.join(30)
    job = jobs.status(ctx.repo, job_id)
    assert job is not None and job.status == "completed", job
    assert found(client, "Patient?nickname=Late") == [late]


def test_cli_reindex_shows_progress_and_other_processes_see_the_result(
    client: TestClient, cli: CliRunner
) -> None:
    pid = patient(client, "Bob")
    create_nickname(client)
    refused(client, "Patient?nickname=Bob", "nickname")
    result = cli.invoke(main, ["reindex", "--batch", "1"])
    assert result.exit_code == 0, result.output
    assert "reindexed 1 of 1 resources (100%)" in result.stderr
    assert "completed: 1 resources of Patient" in result.stdout
    # This process's registries notice the new registry version in the store.
    assert found(client, "Patient?nickname=Bob") == [pid]
    result = cli.invoke(main, ["reindex", "--type", "Unicorn"])
    assert result.exit_code == 1
    assert "Unicorn" in result.output


# --- loading definitions ---------------------------------------------------------------------


def test_load_a_single_searchparameter_twice(client: TestClient, ctx: Context) -> None:
    first = load_definitions(ctx, bundle_resources(NICKNAME))
    assert (first.definitions, first.indexed, first.unsupported) == (1, 1, [])
    assert (first.created, first.updated, first.unchanged, first.pending) == (1, 0, 0, 1)
    again = load_definitions(ctx, bundle_resources(NICKNAME))
    assert (again.created, again.updated, again.unchanged) == (0, 0, 1)
    r = client.get("/fhir/SearchParameter")
    (entry,) = r.json()["entry"]
    assert entry["resource"]["meta"]["versionId"] == "1"


def test_load_reports_what_it_cannot_take(ctx: Context) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": {**NICKNAME, "url": "http://x.org/a", "code": "a", "type": "special"}},
            {"resource": {**NICKNAME, "url": "http://x.org/b", "code": "b", "expression": ""}},
            {
                "resource": {
                    **NICKNAME,
                    "url": "http://x.org/c",
                    "expression": "Patient.name.where(",
                }
            },
            {"resource": {"resourceType": "Patient"}},  # not a definition: not counted
            {"resource": {**NICKNAME, "url": "http://x.org/d", "code": "d"}},
        ],
    }
    report = load_definitions(ctx, bundle_resources(bundle))
    assert (report.definitions, report.indexed, report.created) == (4, 1, 3)
    reasons = {u.url: u.reason for u in report.unsupported}
    assert "'special' is not supported" in reasons["http://x.org/a"]
    assert "not a valid SearchParameter" in reasons["http://x.org/b"]
    assert "cannot be evaluated" in reasons["http://x.org/c"]
    assert all(u.code and u.base for u in report.unsupported)


def test_load_the_official_r4_bundle(
    client: TestClient, ctx: Context, cli: CliRunner, tmp_path: Path
) -> None:
    r = client.post(
        "/fhir/Questionnaire",
        json={"resourceType": "Questionnaire", "status": "active", "title": "Falls risk"},
        headers=FHIR,
    )
    assert r.status_code == 201, r.text
    qid = r.json()["id"]
    report_file = tmp_path / "report.json"
    result = cli.invoke(main, ["definitions", "load", str(OFFICIAL), "--report", str(report_file)])
    assert result.exit_code == 0, result.output
    assert "1382 definitions:" in result.stdout
    report = json.loads(report_file.read_text())
    assert report["definitions"] == 1382
    assert report["indexed"] + len(report["unsupported"]) == 1382
    assert report["indexed"] > 1300
    assert report["stored"]["created"] == 1382
    for u in report["unsupported"]:
        assert u["code"] and u["base"] and u["reason"], u
    codes = {u["code"] for u in report["unsupported"]}
    assert {"_id", "near", "_query"} <= codes
    # Parameters the shipped definitions lack are refused until a reindex.
    refused(client, "Questionnaire?title=falls", "title")
    result = cli.invoke(main, ["reindex"])
    assert result.exit_code == 0, result.output
    assert found(client, "Questionnaire?title=falls") == [qid]
    # Loading again changes nothing and needs no reindex.
    result = cli.invoke(main, ["definitions", "load", str(OFFICIAL)])
    assert result.exit_code == 0, result.output
    assert "stored: 0 created, 0 updated, 1382 unchanged" in result.stdout
    assert "awaiting a reindex (`hub reindex`): 0 stored parameters" in result.stdout


def test_load_refuses_a_file_that_holds_no_definitions(cli: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"resourceType": "Patient"}')
    result = cli.invoke(main, ["definitions", "load", str(bad)])
    assert result.exit_code == 1
    assert "neither a Bundle nor a SearchParameter" in result.output
    bad.write_text("{")
    result = cli.invoke(main, ["definitions", "load", str(bad)])
    assert result.exit_code == 1
    assert "not JSON" in result.output
