"""Build `hub/fhir/r4_bindings.json`: the codes of every R4 element bound `required` to a
value set whose codes R4 itself lists.

Source: the official FHIR R4 (4.0.1) definitions, as published in the npm package
`hl7.fhir.r4.examples` (CC0), which carries the core StructureDefinitions, ValueSets and
CodeSystems beside the examples:

    npm pack hl7.fhir.r4.examples@4.0.1
    .venv/bin/python tools/r4_bindings.py hl7.fhir.r4.examples-4.0.1.tgz

A value set is enumerable when each of its includes names codes outright, imports another
enumerable value set, or takes a whole code system that the package defines with
`content: complete`; includes with filters, or from systems defined elsewhere (UCUM,
SNOMED CT, BCP-47, MIME types, ISO currencies), make it not enumerable, and its bindings
are left out (the script lists them).

The output holds, per type (a resource, a datatype, or a backbone element named by its
path), the elements worth walking into, each as `[child type or null, value set or null]`:
children only where a bound element can be reached below them, so the check walks no
further than it must.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent.parent / "hub" / "fhir" / "r4_bindings.json"
PRIMITIVES = {
    "base64Binary", "boolean", "canonical", "code", "date", "dateTime", "decimal", "id",
    "instant", "integer", "markdown", "oid", "positiveInt", "string", "time", "unsignedInt",
    "uri", "url", "uuid", "xhtml",
}  # fmt: skip
PACKAGE = "hl7.fhir.r4.examples"
VERSION = "4.0.1"


def definitions(source: Path) -> Iterator[dict[str, Any]]:
    """The StructureDefinitions, ValueSets and CodeSystems of the package (tgz or folder)."""
    prefixes = ("StructureDefinition-", "ValueSet-", "CodeSystem-")
    if source.is_dir():
        for path in sorted(source.glob("*.json")):
            if path.name.startswith(prefixes):
                yield json.loads(path.read_bytes())
        return
    with tarfile.open(source) as tar:
        for member in tar:
            name = member.name.rsplit("/", 1)[-1]
            if member.isfile() and name.startswith(prefixes) and name.endswith(".json"):
                handle = tar.extractfile(member)
                assert handle is not None
                yield json.loads(handle.read())


def _concepts(concepts: list[dict[str, Any]]) -> Iterator[str]:
    stack = list(concepts)
    while stack:
        concept = stack.pop()
        yield concept["code"]
        stack.extend(concept.get("concept", ()))


class Expander:
    def __init__(self, value_sets: dict[str, Any], code_systems: dict[str, Any]) -> None:
        self.value_sets = value_sets
        self.code_systems = code_systems
        self.why: dict[str, str] = {}

    def codes(self, url: str, seen: frozenset[str] = frozenset()) -> dict[str, list[str]] | None:
        """{system: codes} of the value set at `url`, or None when R4 does not list them."""
        vs = self.value_sets.get(url)
        if vs is None or url in seen or "compose" not in vs:
            self.why[url] = "not defined in R4" if vs is None else "no compose"
            return None
        out: dict[str, set[str]] = {}
        for include in vs["compose"].get("include", []):
            for imported in include.get("valueSet", []):
                found = self.codes(imported.split("|")[0], seen | {url})
                if found is None:
                    self.why[url] = f"imports {imported}"
                    return None
                for system, codes in found.items():
                    out.setdefault(system, set()).update(codes)
            system = include.get("system")
            if system is None:
                continue
            if "filter" in include:
                self.why[url] = f"filters {system}"
                return None
            if "concept" in include:
                out.setdefault(system, set()).update(c["code"] for c in include["concept"])
                continue
            cs = self.code_systems.get(system)
            if cs is None or cs.get("content") != "complete" or "concept" not in cs:
                self.why[url] = f"takes all of {system}, which R4 does not list"
                return None
            out.setdefault(system, set()).update(_concepts(cs["concept"]))
        for exclude in vs["compose"].get("exclude", []):
            if "concept" not in exclude or "system" not in exclude:
                self.why[url] = "excludes by filter"
                return None
            out.get(exclude["system"], set()).difference_update(
                c["code"] for c in exclude["concept"]
            )
        return {system: sorted(codes) for system, codes in sorted(out.items())}


def _json_names(element: dict[str, Any], name: str) -> list[tuple[str, str]]:
    """(JSON name, type) of an element: a choice `value[x]` gives one name per type."""
    types = [t["code"] for t in element.get("type", [])]
    if "contentReference" in element:
        return [(name, element["contentReference"].lstrip("#"))]
    if name.endswith("[x]"):
        return [(name[:-3] + t[0].upper() + t[1:], t) for t in types]
    return [(name, t) for t in types[:1]]


def build(source: Path) -> dict[str, Any]:
    structures, value_sets, code_systems = [], {}, {}
    for resource in definitions(source):
        kind = resource["resourceType"]
        if kind == "StructureDefinition":
            if resource.get("derivation") == "specialization" and resource.get("kind") in (
                "resource",
                "complex-type",
            ):
                structures.append(resource)
        elif kind == "ValueSet":
            value_sets[resource["url"]] = resource
        else:
            code_systems[resource["url"]] = resource
    expander = Expander(value_sets, code_systems)

    # type -> element JSON name -> (child type, value set url)
    elements: dict[str, dict[str, tuple[str | None, str | None]]] = {}
    skipped: dict[str, str] = {}
    bound: dict[str, dict[str, list[str]]] = {}
    for sd in structures:
        for element in sd["snapshot"]["element"]:
            path = element["path"]
            if "." not in path:
                continue
            parent, name = path.rsplit(".", 1)
            binding = element.get("binding", {})
            vs_url = None
            if binding.get("strength") == "required" and "valueSet" in binding:
                url = binding["valueSet"].split("|")[0]
                codes = expander.codes(url)
                if codes is None:
                    skipped[path] = f"{url}: {expander.why.get(url, '?')}"
                else:
                    vs_url = url
                    bound[url] = codes
            for json_name, type_code in _json_names(element, name):
                if type_code in ("BackboneElement", "Element"):
                    child = path  # a nested element: its children are listed under its path
                elif type_code in PRIMITIVES or type_code.startswith("http://"):
                    child = None
                else:
                    child = type_code  # a datatype, "Resource", or a contentReference path
                elements.setdefault(parent, {})[json_name] = (child, vs_url)

    # The extensions of a primitive (`_name`, which the check walks as an Element).
    elements["Element"] = {"extension": ("Extension", None)}

    # Keep only what leads to a bound element: a fixpoint over the types.
    relevant = {t for t, children in elements.items() if any(v for _, v in children.values())}
    resources = {sd["type"] for sd in structures if sd["kind"] == "resource"}
    changed = True
    while changed:
        changed = False
        for t, children in elements.items():
            if t in relevant:
                continue
            for child, _ in children.values():
                if child in relevant or (child == "Resource" and relevant & resources):
                    relevant.add(t)
                    changed = True
                    break
    types: dict[str, dict[str, list[str | None]]] = {}
    for t, children in sorted(elements.items()):
        if t not in relevant:
            continue
        kept = {
            name: [child if child in relevant or child == "Resource" else None, vs]
            for name, (child, vs) in sorted(children.items())
            if vs or child in relevant or child == "Resource"
        }
        types[t] = kept
    for path, why in sorted(skipped.items()):
        print(f"not enumerable: {path} ({why})", file=sys.stderr)
    return {
        "source": f"{PACKAGE} {VERSION}",
        "valueSets": dict(sorted(bound.items())),
        "types": types,
        "resources": sorted(resources & relevant),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help=f"{PACKAGE}-{VERSION}.tgz or its package/")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    data = build(args.source)
    args.out.write_text(json.dumps(data, separators=(",", ":"), sort_keys=False) + "\n")
    counts = sum(1 for c in data["types"].values() for _, vs in c.values() if vs)
    print(f"{args.out}: {len(data['valueSets'])} value sets, {counts} bound elements")


if __name__ == "__main__":
    main()
