"""Operations endpoints and logs: /healthz, /readyz, /metrics, request ids in JSON lines."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import require_server
from fastapi import FastAPI
from fastapi.testclient import TestClient
from live_server import free_port

from hub import logs
from hub.api.app import create_app
from hub.ingest.celery_app import app as celery
from hub.settings import Settings
from hub.store.migrate import upgrade

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = "redis://127.0.0.1:6379/15"  # the machine's Redis: only pinged
PATIENTS = ROOT / "mappings/csv/examples/synthea-patients/basic.csv"


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = "^" + re.escape(name + (f"{{{want}}}" if want else "")) + r" (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_healthz_and_readyz_answer_when_the_hub_is_ready(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {
        "status": "ready",
        "checks": {"database": {"status": "ok"}, "broker": {"status": "ok"}},
    }


def test_readyz_refuses_a_database_behind_the_migrations(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    settings = Settings(database_url=url)
    upgrade(url, settings.migrations_dir, "0013")
    with TestClient(create_app(settings)) as client:
        answer = client.get("/readyz")
    assert answer.status_code == 503
    database = answer.json()["checks"]["database"]
    assert database["status"] == "down"
    assert "revision 0013;" in database["reason"]


def test_readyz_names_a_broker_that_does_not_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    settings = Settings(database_url=url, broker_url="redis://127.0.0.1:1/0")
    upgrade(url, settings.migrations_dir)
    monkeypatch.setattr(celery.conf, "broker_url", f"redis://127.0.0.1:{free_port()}/0")
    with TestClient(create_app(settings)) as client:
        answer = client.get("/readyz")
    assert answer.status_code == 503, answer.text
    checks = answer.json()["checks"]
    assert checks["database"] == {"status": "ok"}
    assert checks["broker"]["status"] == "down"
    assert checks["broker"]["reason"]


def _redis_unavailable() -> str | None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except redis.RedisError as e:
        return f"Redis at {REDIS_URL} is not reachable: {e}"
    return None


def test_readyz_asks_the_real_broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_server(_redis_unavailable())
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    settings = Settings(database_url=url, broker_url=REDIS_URL)
    upgrade(url, settings.migrations_dir)
    monkeypatch.setattr(celery.conf, "broker_url", REDIS_URL)
    with TestClient(create_app(settings)) as client:
        answer = client.get("/readyz")
    assert answer.status_code == 200, answer.text


def test_metrics_count_requests_by_interaction_and_feed_messages_by_status(
    client: TestClient,
) -> None:
    app: FastAPI = client.app  # type: ignore[assignment]
    app.state.metrics.feeds.ttl = 0  # read the store at every scrape
    before = client.get("/metrics").text
    created = client.post(
        "/fhir/Patient",
        json={"resourceType": "Patient", "name": [{"family": "Metric"}]},
        headers={"Content-Type": "application/fhir+json"},
    )
    assert created.status_code == 201
    patient = created.json()["id"]
    assert client.get(f"/fhir/Patient/{patient}").status_code == 200
    assert client.get("/fhir/Patient/does-not-exist").status_code == 404
    assert client.get("/fhir/Patient", params={"family": "Metric"}).status_code == 200
    ingested = client.post(
        "/ingest/csv",
        params={"mapping": "synthea-patients", "wait": "true"},
        content=PATIENTS.read_bytes(),
        headers={"Content-Type": "text/csv"},
    )
    assert ingested.status_code == 202, ingested.text
    rows = ingested.json()["accepted"]
    after = client.get("/metrics").text
    assert (
        after.startswith("# HELP")
        and "text/plain" in client.get("/metrics").headers["content-type"]
    )

    def moved(name: str, **labels: str) -> float:
        return _sample(after, name, **labels) - _sample(before, name, **labels)

    assert moved("hub_requests_total", interaction="create", method="POST", status="201") == 1
    assert moved("hub_requests_total", interaction="read", method="GET", status="200") == 1
    assert moved("hub_requests_total", interaction="read", method="GET", status="404") == 1
    assert moved("hub_requests_total", interaction="search-type", method="GET", status="200") == 1
    assert moved("hub_request_duration_seconds_count", interaction="read") == 2
    ingest_route = "/ingest/{adapter}"
    assert moved("hub_requests_total", interaction=ingest_route, method="POST", status="202") == 1
    assert rows >= 1
    assert moved("hub_feed_messages", status="done") == rows
    assert _sample(after, "hub_feed_dead_messages") == 0
    assert "hub_feed_queue_depth " in after


@pytest.fixture()
def json_logs() -> Iterator[io.StringIO]:
    """What the hub logs, as configured with HUB_LOG_FORMAT=json, written into a buffer
    instead of stderr; the logging set-up restored after."""
    names = ["hub", "uvicorn", "uvicorn.error", "uvicorn.access", "celery", ""]
    saved = [
        (
            logging.getLogger(n),
            logging.getLogger(n).handlers[:],
            logging.getLogger(n).level,
            logging.getLogger(n).propagate,
        )
        for n in names
    ]
    logs.configure("info", "json")
    buffer = io.StringIO()
    for handler in logging.getLogger("hub").handlers:
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(buffer)
    try:
        yield buffer
    finally:
        for logger, handlers, level, propagate in saved:
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate


def test_every_line_of_a_request_carries_its_request_id(
    client: TestClient, json_logs: io.StringIO
) -> None:
    app: FastAPI = client.app  # type: ignore[assignment]

    @app.get("/test-logs")
    def in_a_thread() -> dict[str, str]:  # a plain def: served in the thread pool
        logging.getLogger("hub.test").info("inside the handler")
        return {}

    sent = client.get("/test-logs", headers={"X-Request-ID": "trace-42"})
    assert sent.headers["x-request-id"] == "trace-42"
    fresh = client.get("/fhir/Patient/none")
    generated = fresh.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    # An id that could forge log lines or headers is not taken.
    forged = client.get("/healthz", headers={"X-Request-ID": "x" * 500})
    assert forged.headers["x-request-id"] != "x" * 500
    # The hub's lines (the test's HTTP client logs its own).
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    lines = [line for line in lines if line["logger"] != "httpx"]
    by_id: dict[str, list[dict[str, str]]] = {}
    for line in lines:
        assert {"time", "level", "logger", "message", "request_id"} <= set(line)
        by_id.setdefault(line["request_id"], []).append(line)
    assert {(x["logger"], x["message"]) for x in by_id["trace-42"]} == {
        ("hub.test", "inside the handler"),
        (
            "hub.requests",
            "GET /test-logs 200 " + by_id["trace-42"][-1]["message"].split()[-2] + " ms",
        ),
    }
    (request_line,) = by_id[generated]
    assert request_line["message"].startswith("GET read 404 ")
    # The query string (which can hold names) is never logged.
    client.get("/fhir/Patient", params={"family": "Secretname"})
    hub_lines = [x for x in json_logs.getvalue().splitlines() if '"logger":"httpx"' not in x]
    assert "GET search-type 200" in hub_lines[-1]
    assert not [x for x in hub_lines if "Secretname" in x]
