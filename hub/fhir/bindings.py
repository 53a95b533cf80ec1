"""Required bindings (https://hl7.org/fhir/R4/terminologies.html#required): an element bound
`required` to a value set holds one of its codes, or the resource is invalid.

The models check the structure only; a code such as `Patient.gender = "banana"` passes them.
`r4_bindings.json` (built by `tools/r4_bindings.py` from the official R4 definitions) holds,
for every type that leads to a bound element, which of its elements to walk into and which
are bound. The check walks a resource along those typed paths only, with an explicit stack,
and costs a set lookup per bound element. Bindings to value sets whose codes R4 does not
list (MIME types, UCUM units, currencies) are not in the file and are not checked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from hub.errors import Invalid, Issue

# A type's elements: JSON name -> (the type to walk into, the element's binding). The type is
# a table, RESOURCE (a contained or entry resource: its own type decides) or None (a leaf).
Table = dict[str, tuple[Any, "Binding | None"]]
RESOURCE = "Resource"
_QUOTED_CODES = 12  # a message lists the allowed codes when there are no more than this


@dataclass(frozen=True, slots=True)
class Binding:
    url: str
    codes: frozenset[str]  # for `code` elements, whatever the system
    codings: frozenset[tuple[str, str]]  # (system, code), for CodeableConcept elements

    def describe(self) -> str:
        if len(self.codes) > _QUOTED_CODES:
            return self.url
        return f"{self.url} ({', '.join(sorted(self.codes))})"


@dataclass(frozen=True)
class Tables:
    source: str
    types: dict[str, Table]


@cache
def tables() -> Tables:
    """The tables of `r4_bindings.json`, with each child type resolved to its table."""
    data = json.loads((resources.files("hub.fhir") / "r4_bindings.json").read_bytes())
    bindings = {
        url: Binding(
            url,
            frozenset(code for codes in systems.values() for code in codes),
            frozenset((system, code) for system, codes in systems.items() for code in codes),
        )
        for url, systems in data["valueSets"].items()
    }
    types: dict[str, Table] = {name: {} for name in data["types"]}
    for name, elements in data["types"].items():
        table = types[name]
        for element, (child, url) in elements.items():
            walk_into = RESOURCE if child == RESOURCE else types.get(child) if child else None
            table[element] = (walk_into, bindings[url] if url else None)
    return Tables(data["source"], types)


def _refused(path: str, code: Any, binding: Binding) -> Issue:
    return Issue(
        "code-invalid",
        f"{path}: '{code}' is not a code of the required value set {binding.describe()}",
        expression=(path,),
    )


def _concept(path: str, concept: dict[str, Any], binding: Binding) -> Issue | None:
    """A CodeableConcept bound `required` needs a coding from the value set."""
    codings = concept.get("coding")
    pairs = [(c.get("system"), c.get("code")) for c in codings or () if isinstance(c, dict)]
    if any(pair in binding.codings for pair in pairs):
        return None
    if not pairs:
        return Issue(
            "code-invalid",
            f"{path}: has no coding from the required value set {binding.describe()}",
            expression=(path,),
        )
    system, code = pairs[0]
    return _refused(f"{path}.coding[0]", f"{system}|{code}", binding)


def _bound(path: str, value: Any, binding: Binding, issues: list[Issue]) -> None:
    if isinstance(value, str):
        if value not in binding.codes:
            issues.append(_refused(path, value, binding))
    elif isinstance(value, dict):
        issue = _concept(path, value, binding)
        if issue is not None:
            issues.append(issue)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if item is not None:  # null holds the place of a value that has extensions only
                _bound(f"{path}[{i}]", item, binding, issues)


# Where a node is: the resource type at the top, else (where its parent is, its name, its
# index in an array or None). Spelled out only for an issue, as most resources have none.
Where = str | tuple[Any, str, int | None]


def _spelled(where: Where) -> str:
    steps = []
    while not isinstance(where, str):
        where, key, index = where
        steps.append(f".{key}" if index is None else f".{key}[{index}]")
    return where + "".join(reversed(steps))


def check(resource_type: str, resource: dict[str, Any]) -> None:
    """Raise `Invalid`, with an issue per element, when a code is outside its required value
    set. Values of the wrong JSON type are left to the model validation."""
    types = tables().types
    table = types.get(resource_type)
    if table is None:
        return
    primitive_extensions = (types["Element"], None)  # a primitive's `_name`: id, extensions
    issues: list[Issue] = []
    stack: list[tuple[dict[str, Any], Table, Where]] = [(resource, table, resource_type)]
    while stack:
        node, table, where = stack.pop()
        for key, value in node.items():
            entry = table.get(key)
            if entry is None:
                if not key.startswith("_"):
                    continue
                entry = primitive_extensions
            child, binding = entry
            if binding is not None and not (type(value) is str and value in binding.codes):
                _bound(f"{_spelled(where)}.{key}", value, binding, issues)
            if child is None:
                continue
            if type(value) is dict:
                if isinstance(child, str):  # RESOURCE: the resource's own type decides
                    _push_resource(stack, value, (where, key, None), types)
                else:
                    stack.append((value, child, (where, key, None)))
            elif type(value) is list:
                for i, item in enumerate(value):
                    if type(item) is not dict:
                        continue
                    if isinstance(child, str):
                        _push_resource(stack, item, (where, key, i), types)
                    else:
                        stack.append((item, child, (where, key, i)))
    if issues:
        issues.sort(key=lambda issue: issue.expression)
        raise Invalid(issues[0].diagnostics, issues=issues)


def _push_resource(
    stack: list[tuple[dict[str, Any], Table, Where]],
    resource: dict[str, Any],
    where: Where,
    types: dict[str, Table],
) -> None:
    table = types.get(str(resource.get("resourceType")))
    if table is not None:
        stack.append((resource, table, where))
