"""The import contracts of pyproject.toml ([tool.importlinter]) hold, and they bite.

The layers, top to bottom: the command line, the other entry points (API, MLLP listener,
Celery tasks), `hub.assembly`, `hub.ingest`, `hub.interactions`, `hub.parameters`,
`hub.store`, `hub.search` (parsing and index extraction, no I/O), then `hub.fhir`,
`hub.settings` and `hub.logs`, then `hub.errors`. SQL drivers and the schema are imported
under `hub.store` only, and no two sibling packages or modules import each other.
docs/api.md#how-the-hub-is-put-together explains them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
CONTRACTS = {"layers", "sql-in-store", "acyclic"}


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH first: the packages under `cwd` are the ones analysed, not the installed ones.
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_import_contracts_are_kept() -> None:
    run = _lint(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 kept, 0 broken" in run.stdout, run.stdout


def test_the_contracts_name_every_layer_in_order() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contracts = {c["id"]: c for c in config["contracts"]}
    assert set(contracts) == CONTRACTS
    assert contracts["layers"]["layers"] == [
        "hub.cli",
        "hub.api | hub.mllp | hub.tasks",
        "hub.assembly",
        "hub.ingest",
        "hub.interactions",
        "hub.parameters",
        "hub.store",
        "hub.search",
        "hub.fhir | hub.settings | hub.logs",
        "hub.errors",
    ]
    assert set(contracts["sql-in-store"]["forbidden_modules"]) == {
        "sqlalchemy",
        "psycopg",
        "psycopg_pool",
        "hub.store.schema",
    }
    # Every top-level part of the hub but the store is held to it.
    parts = {
        p.stem if p.is_file() else p.name
        for p in (ROOT / "hub").iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()
    }
    assert {f"hub.{p}" for p in parts} - {"hub.store"} <= set(
        contracts["sql-in-store"]["source_modules"]
    )


def _copy(tmp_path: Path) -> Path:
    """The hub's packages and configuration, in a folder of their own."""
    for package in ("hub", "adapters"):
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}\n")


def test_an_import_upwards_breaks_the_layers(tmp_path: Path) -> None:
    copy = _copy(tmp_path)
    _append(copy / "hub" / "interactions" / "read.py", "import hub.api.app  # noqa")
    run = _lint(copy)
    assert run.returncode != 0
    assert "hub.interactions.read -> hub.api.app" in run.stdout, run.stdout


def test_sql_outside_the_store_breaks_the_contract(tmp_path: Path) -> None:
    copy = _copy(tmp_path)
    _append(copy / "hub" / "api" / "reads.py", "import sqlalchemy  # noqa")
    run = _lint(copy)
    assert run.returncode != 0
    assert "hub.api is not allowed to import sqlalchemy" in run.stdout, run.stdout


def test_a_cycle_between_siblings_breaks_the_contract(tmp_path: Path) -> None:
    copy = _copy(tmp_path)
    # Both in one layer, so only the cycle contract can notice.
    _append(copy / "hub" / "interactions" / "read.py", "import hub.interactions.history  # noqa")
    _append(copy / "hub" / "interactions" / "history.py", "import hub.interactions.read  # noqa")
    run = _lint(copy)
    assert run.returncode != 0
    assert "No import cycles between sibling packages or modules BROKEN" in run.stdout, run.stdout
