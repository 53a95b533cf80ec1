"""SIGTERM to `hub serve`: what is in flight finishes, whole, before the process ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from ingest_fixtures import PATIENT_COLUMNS, csv_bytes, patient_row
from live_server import free_port, wait_ready


def _output_if_ended(server: subprocess.Popen[bytes]) -> str | None:
    if server.poll() is None:
        return None
    return server.stdout.read().decode()  # type: ignore[union-attr]


@pytest.mark.e2e
def test_sigterm_lets_a_request_in_flight_finish(tmp_path: Path) -> None:
    """A feed POST that waits for its rows to be processed is under way when `hub serve`
    gets SIGTERM: it is answered, whole, and then the process ends."""
    port = free_port()
    env = {
        **os.environ,
        "HUB_DATABASE_URL": f"sqlite:///{tmp_path / 'hub.db'}",
        "HUB_PORT": str(port),
        "HUB_SHUTDOWN_SECONDS": "60",
        "HUB_MLLP_ENABLED": "false",  # port 2575 is not the test's to take
    }
    env.pop("HUB_BROKER_URL", None)
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("hub")), "serve", "--migrate"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, lambda: _output_if_ended(server))
        rows = [patient_row(f"term-{i:04d}") for i in range(400)]
        answer: list[httpx.Response] = []
        sender = threading.Thread(
            target=lambda: answer.append(
                httpx.post(
                    f"{base}/ingest/csv",
                    params={"mapping": "synthea-patients", "wait": "true"},
                    content=csv_bytes(PATIENT_COLUMNS, rows),
                    headers={"Content-Type": "text/csv"},
                    timeout=120,
                )
            )
        )
        sender.start()
        time.sleep(1.0)  # stored, and being processed
        assert sender.is_alive(), "the request ended before the signal: nothing was tested"
        server.send_signal(signal.SIGTERM)
        sender.join(timeout=120)
        assert answer and answer[0].status_code == 202, answer
        summary = answer[0].json()
        assert summary["accepted"] == len(rows)
        assert summary["done"] == len(rows) and summary["open"] == 0, summary
        # uvicorn ends by raising the signal again once it has shut down.
        assert server.wait(timeout=60) in (0, -signal.SIGTERM)
        output = server.stdout.read().decode()  # type: ignore[union-attr]
        assert "Finished server process" in output, output
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
