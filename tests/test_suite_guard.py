"""The suite says so when a server it needs is missing: loudly without CI, as a failure with it.

A run whose PostgreSQL tests were all skipped must not look green. This runs one small
test module of the suite in a pytest of its own, against a server that is not there.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run_without_postgres(ci: bool) -> subprocess.CompletedProcess[str]:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["HUB_TEST_POSTGRES_URL"] = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    env["CI"] = "true" if ci else ""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_migrations.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_skipped_postgresql_tests_are_counted_in_a_banner() -> None:
    run = _run_without_postgres(ci=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 skipped" in run.stdout
    assert "1 test was SKIPPED: a server it needs is missing" in run.stdout


def test_with_ci_a_missing_postgresql_fails_the_run() -> None:
    run = _run_without_postgres(ci=True)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "CI=true: a missing server is a failure" in run.stdout
