"""The golden harness, and every golden example of the repository's mappings.

Each `mappings/<adapter>/examples/<mapping>/<case>` is its own test: a mapping
change that alters what a sample row becomes fails here with a diff.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from adapters.csv import CsvAdapter
from hub.cli import main
from hub.ingest import golden
from hub.ingest.adapters import BUILTINS, AdapterInfo, AdapterRegistry
from hub.ingest.mapping import discover

ROOT = Path(__file__).resolve().parent.parent
MAPPINGS = ROOT / "mappings"
CASES = golden.find_cases([MAPPINGS])


@pytest.fixture(scope="module")
def builtins() -> AdapterRegistry:
    """The built-in adapters only: the repository's examples must not depend on plug-ins."""
    return AdapterRegistry({n: AdapterInfo(n, "built-in", t) for n, t in BUILTINS.items()})


def test_the_repository_has_examples() -> None:
    assert len(CASES) >= 4
    assert golden.untested([MAPPINGS]) == [], "every mapping needs a golden example"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_golden_example(case: golden.Case, builtins: AdapterRegistry) -> None:
    mapping = discover(MAPPINGS)[case.mapping]
    result = golden.check(case, builtins.get(case.adapter), mapping)
    assert result.ok, result.report()


def _walk(value: Any) -> Iterator[Mapping[str, Any]]:
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def test_synthea_examples_reference_each_other_by_the_same_ids() -> None:
    """Patients, encounters, conditions and observations agree on deterministic ids."""
    produced = [
        item
        for case in CASES
        if case.mapping.startswith("synthea-")
        for item in json.loads(case.expected.read_text())
    ]
    ids = {f"{r['resourceType']}/{r['id']}" for r in produced if "resourceType" in r}
    references = {node["reference"] for r in produced for node in _walk(r) if "reference" in node}
    assert references and references <= ids
    values = [r.get("valueQuantity", {}).get("value") for r in produced]
    assert 74 in values and 95.6 in values  # TYPE numeric: integers stay integers
    assert "Never smoked tobacco (finding)" in [r.get("valueString") for r in produced]
    assert any("rejected" in r for r in produced)


@pytest.fixture()
def patients(tmp_path: Path) -> Path:
    """A mappings root holding a copy of the Synthea patients mapping and its basic example."""
    root = tmp_path / "mappings"
    folder = root / "csv" / "examples" / "synthea-patients"
    folder.mkdir(parents=True)
    shutil.copy(MAPPINGS / "csv" / "synthea-patients.yaml", root / "csv")
    source = MAPPINGS / "csv" / "examples" / "synthea-patients"
    for name in ("basic.csv", "basic.expected.json"):
        shutil.copy(source / name, folder / name)
    return root


def _spoil(expected: Path) -> str:
    """Make the expected file wrong (and hand-formatted); return the original text."""
    original = expected.read_text()
    data = json.loads(original)
    assert data[0]["gender"] == "male"
    data[0]["gender"] = "female"
    del data[1]["birthDate"]
    expected.write_text(json.dumps(data))
    return original


def test_a_wrong_expected_file_fails_with_a_diff(patients: Path) -> None:
    registry = {"csv": CsvAdapter()}
    expected = patients / "csv/examples/synthea-patients/basic.expected.json"
    original = _spoil(expected)
    [result] = golden.run([patients], registry)
    assert result.status == golden.FAIL and not result.ok
    assert "differs from" in result.message
    lines = result.diff.splitlines()
    assert lines[0].startswith("--- ") and lines[0].endswith("basic.expected.json")
    assert lines[1] == "+++ actual output of basic.csv"
    assert '-    "gender": "female",' in lines
    assert '+    "gender": "male",' in lines
    assert '+    "birthDate": "1972-04-14",' in lines
    assert "FAIL csv/synthea-patients/basic" in result.report()

    [updated] = golden.run([patients], registry, update=True)
    assert updated.status == golden.UPDATED
    assert expected.read_text() == original  # canonical form: sorted keys, indent 2
    [again] = golden.run([patients], registry)
    assert again.status == golden.PASS and again.diff == ""


def test_a_missing_expected_file_fails_and_shows_the_output(patients: Path) -> None:
    expected = patients / "csv/examples/synthea-patients/basic.expected.json"
    expected.unlink()
    [result] = golden.run([patients], {"csv": CsvAdapter()})
    assert result.status == golden.FAIL
    assert "is missing" in result.message
    assert '+    "resourceType": "Patient"' in result.diff.splitlines()


def test_a_crashing_adapter_is_reported_with_its_case(patients: Path) -> None:
    class Broken(CsvAdapter):
        def parse(self, raw: bytes) -> Mapping[str, str]:
            raise RuntimeError("boom")

    [result] = golden.run([patients], {"csv": Broken()})
    assert result.status == golden.FAIL
    assert "the case cannot run: RuntimeError: boom" in result.message


def test_an_example_without_its_mapping_fails(patients: Path) -> None:
    (patients / "csv" / "synthea-patients.yaml").unlink()
    [result] = golden.run([patients], {"csv": CsvAdapter()})
    assert result.status == golden.FAIL
    assert "no mapping 'synthea-patients' for the csv adapter" in result.message


def _hub(args: list[str], mappings: Path) -> Any:
    env = {"HUB_MAPPINGS_DIR": str(mappings), "HUB_ADAPTERS": '["csv"]'}
    return CliRunner().invoke(main, args, env=env)


def test_mappings_test_command(patients: Path) -> None:
    expected = patients / "csv/examples/synthea-patients/basic.expected.json"
    original = _spoil(expected)

    failed = _hub(["mappings", "test", "--mapping", "synthea-patients"], patients)
    assert failed.exit_code == 1, failed.output
    assert "FAIL csv/synthea-patients/basic" in failed.output
    assert '+    "gender": "male",' in failed.output
    assert failed.output.rstrip().endswith("1 failed")

    updated = _hub(["mappings", "test", "--adapter", "csv", "--update"], patients)
    assert updated.exit_code == 0, updated.output
    assert "UPDATED csv/synthea-patients/basic" in updated.output
    assert expected.read_text() == original

    passed = _hub(["mappings", "test"], patients)
    assert passed.exit_code == 0, passed.output
    assert "PASS csv/synthea-patients/basic" in passed.output
    assert passed.output.rstrip().endswith("1 passed")


def test_mappings_test_without_matching_examples_fails(patients: Path) -> None:
    result = _hub(["mappings", "test", "--adapter", "hl7v2"], patients)
    assert result.exit_code == 1
    assert "no golden examples for --adapter hl7v2" in result.output


def test_the_repository_examples_pass_through_the_command() -> None:
    result = _hub(["mappings", "test", "--adapter", "csv"], MAPPINGS)
    assert result.exit_code == 0, result.output
    assert f"{len(CASES)} passed" in result.output
