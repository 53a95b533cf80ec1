"""Golden examples: sample input beside the FHIR it must become, checked on every test run.

A mapping is data, so a regression in one shows up only in what it produces.
Each mappings root (the hub's `mappings/`, or the folder an adapter package
ships) keeps, beside each mapping, sample input in the adapter's own format
and the resources expected from it:

    <adapter>/<mapping>.yaml
    <adapter>/examples/<mapping>/<case>.<ext>            sample input (any extension)
    <adapter>/examples/<mapping>/<case>.expected.json    what it must become

The expected file is a JSON list of what the input's units produce, in order:
each unit's resources, or, for a unit the hub would reject, one object
`{"rejected": "<where>: <why>"}` with the message the message store would
keep. A case runs like the pipeline without the store: split, parse, map,
validate each resource. Both sides are compared as JSON dumped with sorted
keys and an indent, so a mismatch reads as a unified diff.
"""

from __future__ import annotations

import difflib
import json
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hub.errors import Invalid
from hub.fhir import validate
from hub.ingest.adapters import Adapter, AdapterRegistry, Unit
from hub.ingest.mapping import Mapper, Mapping_, discover

EXAMPLES = "examples"
EXPECTED_SUFFIX = ".expected.json"
PASS, FAIL, UPDATED = "PASS", "FAIL", "UPDATED"

Adapters = AdapterRegistry | Mapping[str, Adapter]


@dataclass(frozen=True)
class Case:
    root: Path
    adapter: str
    mapping: str
    name: str
    input: Path

    @property
    def expected(self) -> Path:
        return self.input.with_name(self.name + EXPECTED_SUFFIX)

    @property
    def id(self) -> str:
        return f"{self.adapter}/{self.mapping}/{self.name}"

    def __str__(self) -> str:
        return self.id


@dataclass(frozen=True)
class Result:
    case: Case
    status: str
    diff: str = ""
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status != FAIL

    def report(self) -> str:
        """The status line, then why, then the diff (expected -> actual)."""
        lines = [f"{self.status} {self.case.id}"]
        lines += [f"    {line}" for line in self.message.splitlines()]
        if self.diff:
            lines.append(self.diff.rstrip("\n"))
        return "\n".join(lines)


def dumps(data: Any) -> str:
    """The canonical text of an expected file: sorted keys, two-space indent."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _is_input(path: Path) -> bool:
    name = path.name
    return (
        path.is_file()
        and not name.startswith((".", "_"))
        and not name.endswith(EXPECTED_SUFFIX)
        and not name.lower().startswith("readme")
    )


def find_cases(
    roots: Iterable[Path], adapter: str | None = None, mapping: str | None = None
) -> list[Case]:
    """Every example under the roots, optionally of one adapter or one mapping."""
    cases = []
    for root in roots:
        for examples in sorted(root.glob(f"*/{EXAMPLES}")):
            if adapter is not None and examples.parent.name != adapter:
                continue
            for folder in sorted(p for p in examples.iterdir() if p.is_dir()):
                if mapping is not None and folder.name != mapping:
                    continue
                for path in sorted(filter(_is_input, folder.iterdir())):
                    name = path.name.rsplit(".", 1)[0] if "." in path.name else path.name
                    cases.append(Case(root, examples.parent.name, folder.name, name, path))
    return cases


def untested(
    roots: Iterable[Path], adapter: str | None = None, mapping: str | None = None
) -> list[str]:
    """`adapter/mapping` of every mapping file that has no example."""
    have = {(c.adapter, c.mapping) for c in find_cases(roots, adapter, mapping)}
    missing = []
    for root in roots:
        for m in discover(root).values():
            if adapter not in (None, m.adapter) or mapping not in (None, m.name):
                continue
            if (m.adapter, m.name) not in have:
                missing.append(f"{m.adapter}/{m.name}")
    return sorted(missing)


def _rejected(unit: Unit, adapter: Adapter, error: Exception) -> dict[str, str]:
    # The same text the pipeline stores on a failed message.
    field = getattr(error, "field", None)
    label = f"{adapter.field_label} {field}" if field else ""
    where = ", ".join(p for p in (unit.origin, label) if p)
    return {"rejected": f"{where}: {error}" if where else str(error)}


def produce(case: Case, adapter: Adapter, mapping: Mapping_) -> list[dict[str, Any]]:
    """What the case's input becomes: resources, and `rejected` entries, unit by unit."""
    out: list[dict[str, Any]] = []
    mapper = Mapper(mapping)
    with case.input.open("rb") as stream:
        for unit in adapter.split(stream, case.input.name, mapping.name):
            try:
                mapped = adapter.map(adapter.parse(unit.raw), mapper)
                for resource in mapped.resources:
                    validate(resource)
            except (Invalid, LookupError) as e:
                out.append(_rejected(unit, adapter, e))
                continue
            out.extend(mapped.resources)
    return out


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def check(case: Case, adapter: Adapter, mapping: Mapping_, update: bool = False) -> Result:
    """Run one case and compare it with its expected file (or rewrite that, with `update`)."""
    try:
        actual = dumps(produce(case, adapter, mapping))
    except Exception as e:  # an adapter bug: report it with the case, run the others
        return Result(
            case,
            FAIL,
            message=f"the case cannot run: {type(e).__name__}: {e}\n" + traceback.format_exc(),
        )
    expected_path = case.expected
    previous = expected_path.read_text(encoding="utf-8") if expected_path.exists() else None
    if update:
        if previous == actual:
            return Result(case, PASS)
        expected_path.write_text(actual, encoding="utf-8")
        return Result(case, UPDATED, message=f"wrote {_shown(expected_path)}")
    if previous is None:
        return Result(
            case,
            FAIL,
            message=f"{_shown(expected_path)} is missing; check the "
            "output below, then write it with `hub mappings test --update`",
            diff=_diff("", actual, case),
        )
    try:
        expected = dumps(json.loads(previous))
    except ValueError as e:
        return Result(case, FAIL, message=f"{_shown(expected_path)} is not JSON: {e}")
    if expected == actual:
        return Result(case, PASS)
    return Result(
        case,
        FAIL,
        message=f"the output differs from {_shown(expected_path)} (- expected, + actual)",
        diff=_diff(expected, actual, case),
    )


def _diff(expected: str, actual: str, case: Case) -> str:
    return "".join(
        difflib.unified_diff(
            expected.splitlines(keepends=True),
            actual.splitlines(keepends=True),
            fromfile=_shown(case.expected),
            tofile=f"actual output of {case.input.name}",
        )
    )


def _adapter(adapters: Adapters, name: str) -> Adapter:
    if isinstance(adapters, AdapterRegistry):
        return adapters.get(name)
    if name not in adapters:
        raise LookupError(f"no adapter '{name}' among {', '.join(sorted(adapters)) or 'none'}")
    return adapters[name]


def run(
    roots: Sequence[Path],
    adapters: Adapters,
    *,
    adapter: str | None = None,
    mapping: str | None = None,
    update: bool = False,
) -> list[Result]:
    """Check every example under the roots against the mapping file beside it."""
    catalogues: dict[Path, dict[str, Mapping_] | str] = {}
    for root in roots:
        try:
            catalogues[root] = discover(root)
        except (ValueError, yaml.YAMLError) as e:
            catalogues[root] = f"the mappings under {_shown(root)} do not load: {e}"
    results = []
    for case in find_cases(roots, adapter, mapping):
        catalogue = catalogues[case.root]
        if isinstance(catalogue, str):
            results.append(Result(case, FAIL, message=catalogue))
            continue
        found = catalogue.get(case.mapping)
        if found is None or found.adapter != case.adapter:
            results.append(
                Result(
                    case,
                    FAIL,
                    message=f"no mapping '{case.mapping}' for the "
                    f"{case.adapter} adapter in {_shown(case.root)}",
                )
            )
            continue
        try:
            instance = _adapter(adapters, case.adapter)
        except LookupError as e:
            results.append(Result(case, FAIL, message=str(e)))
            continue
        results.append(check(case, instance, found, update))
    return results


def assert_examples(
    roots: Sequence[Path],
    adapters: Adapters,
    *,
    adapter: str | None = None,
    mapping: str | None = None,
) -> list[Result]:
    """For an adapter's own tests: fail, with every report, unless all examples pass."""
    results = run(roots, adapters, adapter=adapter, mapping=mapping)
    if not results:
        raise AssertionError(f"no golden examples under {', '.join(map(_shown, roots))}")
    failed = [r for r in results if not r.ok]
    if failed:
        raise AssertionError("\n\n".join(r.report() for r in failed))
    return results
