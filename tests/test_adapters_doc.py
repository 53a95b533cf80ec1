"""docs/adapters.md does what it says: its commands run, its example maps as shown.

The quick start is taken from the page and run command by command in a
temporary folder. `pip install -e DIR` is done the way pip does it, without
touching the test environment: the project folder goes on `sys.path` (as the
editable install's .pth file would put it) beside a `.dist-info` folder holding
the metadata and entry points read from the project's pyproject.toml, which is
what `importlib.metadata` finds the adapter by.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result

from hub.cli import main
from hub.fhir import validate
from hub.ingest import mapping as mapping_module
from hub.ingest.adapters import ENTRY_POINT_GROUP
from hub.ingest.mapping import Mapper, load_mapping
from hub.store import SqlRepository

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "adapters.md"
TEXT = DOC.read_text(encoding="utf-8")


def _block(tag: str) -> str:
    found = re.search(rf"<!-- tested: {tag} -->\n```\w*\n(.*?)```", TEXT, re.S)
    assert found, f"docs/adapters.md has no block tagged '{tag}'"
    return found.group(1)


def test_the_documented_mapping_maps_the_documented_record(tmp_path: Path) -> None:
    path = tmp_path / "clinic-visits.yaml"
    path.write_text(_block("mapping"), encoding="utf-8")
    mapper = Mapper(load_mapping(path))
    record = json.loads(_block("record"))
    expected = json.loads(_block("output"))

    mapped = mapper.map(record)
    for resource in mapped.resources:
        validate(resource)
    assert mapped.resources == expected
    assert mapped.order_key == "00012345"
    _, encounter, observation = mapped.resources
    assert observation["encounter"]["reference"] == f"Encounter/{encounter['id']}"
    assert ("Encounter.status", "DISCHARGED") in mapped.lineage[1]

    # The other branch of every condition, through the same mapper.
    other = mapper.map(
        {
            **record,
            "MRN": "00067890",
            "SEX": "x",
            "DECEASED": "yes",
            "WARD": "GP",
            "DISCHARGED": "2024-07-02 10:00",
            "LOS_MIN": "1470",
            "READMIT": "N",
            "TEMP_C": "",
        }
    )
    assert [r["resourceType"] for r in other.resources] == ["Patient", "Encounter"]
    assert other.resources[0]["gender"] == "unknown"  # the "*" default of the table
    assert other.resources[0]["deceasedBoolean"] is True
    visit = other.resources[1]
    assert visit["status"] == "finished"
    assert visit["class"]["code"] == "AMB"
    assert visit["period"] == {
        "start": "2024-03-01T09:30:00+01:00",
        "end": "2024-07-02T10:00:00+02:00",
    }
    assert visit["length"] == {"value": 1470, "unit": "min"}
    assert "priority" not in visit and "hospitalization" not in visit
    # Constants filled in by deeper paths are copied, never changed in the mapping.
    assert mapper.map(record).resources == expected


def test_every_mapping_option_and_type_is_documented() -> None:
    """The keys the loader reads and the types the engine converts all have a description."""
    source = inspect.getsource(mapping_module)
    keys = set(re.findall(r"""(?:spec|data|r)(?:\.get\(|\[)"(\w+)\"""", source))
    types = set(re.findall(r'kind == "(\w+)"', source)) | {"string", "decimal", "integer"}
    assert {"field", "value", "lookup", "when", "present", "absent", "resources"} <= keys
    assert {"date", "datetime", "boolean", "reference"} <= types
    conditions = {"equals", "in", "present"}
    missing = [k for k in sorted(keys | types | conditions | {"timezone"}) if f"`{k}`" not in TEXT]
    assert not missing, f"docs/adapters.md does not describe {missing}"


def _hub(args: list[str], **env: str | None) -> Result:
    # Unset: whatever the developer's shell says about the hub must not change the result.
    base: dict[str, str | None] = {"HUB_ADAPTERS": None, "HUB_BROKER_URL": None}
    result = CliRunner().invoke(main, args, env={**base, **env})
    return result


def _trace(result: Result) -> str:
    if result.exc_info is None or isinstance(result.exception, SystemExit):
        return ""
    return "".join(traceback.format_exception(*result.exc_info))


def _pip_install_editable(project: Path, site: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """`pip install -e project`, as far as the hub can tell, without changing the venv.

    Returns the folders put on `sys.path`, for subprocesses to see the same.
    """
    meta = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    dist, version = meta["project"]["name"], meta["project"]["version"]
    entry_points = meta["project"]["entry-points"][ENTRY_POINT_GROUP]
    # What a regular install would copy: the packages and their data (the mappings).
    setuptools = meta["tool"]["setuptools"]
    for package in setuptools["packages"]:
        assert (project / package / "__init__.py").is_file()
        shipped = {
            p for g in setuptools["package-data"][package] for p in (project / package).glob(g)
        }
        assert any(p.suffix == ".yaml" for p in shipped) and any(
            p.name.endswith(".expected.json") for p in shipped
        )
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = [f"{name} = {target}" for name, target in entry_points.items()]
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n" + "\n".join(lines) + "\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(project))
    return [str(project), str(site)]


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("fhir_hub_"):
            del sys.modules[name]


def _quickstart() -> list[list[str]]:
    return [shlex.split(line) for line in _block("quickstart").splitlines() if line.strip()]


def test_the_quickstart_runs_as_written(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    database = f"sqlite:///{workdir / 'hub.db'}"
    outputs: dict[str, str] = {}
    installed: list[str] = []
    for argv in _quickstart():
        line = shlex.join(argv)
        if argv[0] == "hub":
            result = _hub(argv[1:], HUB_DATABASE_URL=database)
            assert result.exit_code == 0, f"{line}\n{result.output}\n{_trace(result)}"
            outputs[" ".join(argv[1:3])] = result.output
        elif argv[:3] == ["pip", "install", "-e"]:
            installed += _pip_install_editable(
                Path(argv[3]).resolve(), workdir / "site", monkeypatch
            )
        elif argv[0] == "pytest":
            env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
            env["PYTHONPATH"] = os.pathsep.join(installed)
            run = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *argv[1:]],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert run.returncode == 0, f"{line}\n{run.stdout}\n{run.stderr}"
            assert " passed" in run.stdout
        else:
            pytest.fail(f"the test does not know how to run the documented command: {line}")

    assert "pip install -e ./fhir-hub-labfeed" in outputs["adapters new"]
    listed = outputs["adapters list"].splitlines()
    assert any(
        re.match(r"labfeed\s+fhir-hub-labfeed\s+fhir_hub_labfeed:LabfeedAdapter$", x)
        for x in listed
    ), listed
    assert any(re.match(r"\s+labfeed-example\s+v1\s", x) for x in listed)
    assert "PASS labfeed/labfeed-example/basic" in outputs["mappings test"]
    assert "PASS labfeed/labfeed-example/rejected" in outputs["mappings test"]
    assert (
        "3 rows (0 duplicates): 3 done, 0 rejected, 0 dead, 0 still open; 6 resources written"
        in outputs["ingest --adapter"]
    )

    # What was stored is what the golden example says.
    ingested = Path(_quickstart()[-1][-1])
    expected = json.loads(ingested.with_name("basic.expected.json").read_text())
    repo = SqlRepository.from_url(database, pool_size=1)
    try:
        for resource in expected:
            version = repo.read(resource["resourceType"], resource["id"])
            assert version is not None and version.content is not None
            stored: dict[str, Any] = orjson.loads(version.content)
            stored.pop("meta", None)
            assert stored == resource
    finally:
        repo.close()


def test_hub_adapters_restricts_and_fails_on_unknown_names(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _hub(["adapters", "new", "labfeed"]).exit_code == 0
    _pip_install_editable((workdir / "fhir-hub-labfeed").resolve(), workdir / "site", monkeypatch)
    database = f"sqlite:///{workdir / 'hub.db'}"
    assert _hub(["db", "upgrade"], HUB_DATABASE_URL=database).exit_code == 0

    listed = _hub(["adapters", "list"], HUB_ADAPTERS='["csv"]')
    assert "(disabled: not in HUB_ADAPTERS)" in listed.output
    assert "labfeed-example" not in listed.output  # a disabled adapter's mappings are not loaded
    sample = next((workdir / "fhir-hub-labfeed").rglob("basic.jsonl"))
    refused = _hub(
        ["ingest", "--adapter", "labfeed", "--mapping", "labfeed-example", str(sample)],
        HUB_ADAPTERS='["csv"]',
        HUB_DATABASE_URL=database,
    )
    assert refused.exit_code == 2  # refused before anything is stored
    assert "adapter 'labfeed' is installed but not enabled" in refused.output

    both = _hub(["mappings", "test"], HUB_ADAPTERS='["csv","labfeed"]')
    assert both.exit_code == 0 and "PASS labfeed/" in both.output and "PASS csv/" in both.output

    unknown = _hub(["adapters", "list"], HUB_ADAPTERS='["csv","hl7"]')
    assert unknown.exit_code == 1
    assert "unknown adapter 'hl7'; known adapters: csv, hl7v2, labfeed" in unknown.output


def test_adapters_new_refuses_what_it_cannot_create(workdir: Path) -> None:
    assert "not a usable adapter name" in _hub(["adapters", "new", "Lab Feed"]).output
    assert "exists already" in _hub(["adapters", "new", "csv"]).output
    (workdir / "taken").mkdir()
    (workdir / "taken" / "file").write_text("")
    result = _hub(["adapters", "new", "labfeed", "--path", "taken"])
    assert result.exit_code == 1 and "is not an empty folder" in result.output
