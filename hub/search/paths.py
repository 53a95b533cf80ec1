"""Evaluating search parameter expressions.

Most expressions in the SearchParameter definitions are plain paths
(`Patient.name`, `Observation.value.as(Quantity)`), evaluated here by walking
the JSON with the R4 model's knowledge of choice elements; anything else goes
to fhirpathpy. FHIRPath evaluation was the largest cost of a write (see
docs/search.md), and the walk gives the same values for the plain paths at a
fraction of the time; tests compare the two on every shipped definition.

`X.where(field='value')` is walked too, keeping the elements whose field holds
that string (`Patient.telecom.where(system='phone')`).

`X.where(resolve() is Patient)` cannot be evaluated without the referenced
resource; it is read as "X, keeping references to Patient", which is what it
means for an index.

A walked path also knows the R4 type of each value it finds (`Part.typed`):
the declared type of the element (`Patient.birthDate` is a date,
`Observation.code` a CodeableConcept), or for a choice element the type its
JSON key names (`valueQuantity`, `effectivePeriod`). Index extraction chooses
how to index a value by that type (`hub.search.types`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fhirpathpy
from fhirpathpy.models import models

_MODEL = models["r4"]
_CHOICES: dict[str, list[str]] = _MODEL["choiceTypePaths"]
_TYPES: dict[str, str] = _MODEL["path2Type"]
_ELSEWHERE: dict[str, str] = _MODEL["pathsDefinedElsewhere"]

_RESOLVE = re.compile(r"\.where\(resolve\(\) is (\w+)\)")
_PLAIN = re.compile(
    r"^\(?(?P<path>[A-Z]\w*(?:\.\w+)*)"
    r"(?:(?: as |\.as\(|\.ofType\()(?P<type>\w+)\)?)?\)?$"
)

# `Patient.telecom.where(system='phone')`: a plain path, keeping elements with that value.
_WHERE_EQUALS = re.compile(
    r"^(?P<path>[A-Z]\w*(?:\.\w+)*)\.where\((?P<field>[a-z]\w*)\s*=\s*'(?P<value>[^'\\]*)'\)$"
)

Evaluate = Callable[[dict[str, Any]], list[Any]]
# Values with their R4 type name ('dateTime', 'CodeableConcept'); None where it is not known.
Typed = list[tuple[Any, str | None]]
EvaluateTyped = Callable[[dict[str, Any]], Typed]

# Primitive type names as R4 spells them: a choice key names them capitalised (`valueString`).
_PRIMITIVES = {t for t in _TYPES.values() if t[:1].islower()}


def _type_name(name: str | None) -> str | None:
    """The R4 type name of a model type or a choice suffix ('String' -> 'string')."""
    if name is None:
        return None
    if name == "System.String":  # ids and extension urls: plain strings in JSON
        return "string"
    lowered = name[0].lower() + name[1:]
    return lowered if lowered in _PRIMITIVES else name


def _untyped(evaluate: Evaluate) -> EvaluateTyped:
    # fhirpathpy answers plain JSON values without the R4 type of the element they came from
    # (functions, `extension('url').value`, `resolve()`): extraction falls back to their shape.
    return lambda resource: [(v, None) for v in evaluate(resource)]


@dataclass(frozen=True)
class Part:
    """One `|`-separated part of an expression, with the reference type it keeps."""

    evaluate: Evaluate
    target: str | None = None
    # The same values with their R4 types; without one, every type is unknown.
    typed_evaluate: EvaluateTyped | None = None
    # A walked part's first step: the JSON keys it starts from. An element holding none of
    # them gives no value, which `typed` answers without walking: a resource type has dozens
    # of parameters, and a resource fills a few of their elements (None: not known).
    keys: tuple[str, ...] | None = None

    def typed(self, resource: dict[str, Any]) -> Typed:
        if self.keys is not None:
            for key in self.keys:  # a loop: a generator costs more than the walk it saves
                if key in resource:
                    break
            else:
                return []
        if self.typed_evaluate is None:
            return [(v, None) for v in self.evaluate(resource)]
        return self.typed_evaluate(resource)


def split_union(expression: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in expression:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "|" and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def _capital(name: str) -> str:
    return name[0].upper() + name[1:]


def _walker(path: str, as_type: str | None, context: str | None = None) -> Walk | None:
    """A walk along `path`; with `context`, `path` is relative to an element at that path."""
    steps = path.split(".")
    if context is None:
        root, names = steps[0], steps[1:]
        type_path = root
    else:
        root, names = "", steps
        type_path = _context_type(context)
    plan: list[tuple[str, ...]] = []  # per step: the JSON keys that hold it
    last_types: tuple[str | None, ...] = (_type_name(_TYPES.get(root)) if root else None,)
    for i, name in enumerate(names):
        here = f"{type_path}.{name}"
        here = _ELSEWHERE.get(here, here)
        choices = _CHOICES.get(here)
        last = i == len(names) - 1
        if choices:
            wanted = [c for c in choices if as_type is None or c.lower() == as_type.lower()]
            if not wanted or not last:
                return None
            plan.append(tuple(name + _capital(c) for c in wanted))
            last_types = tuple(_type_name(c) for c in wanted)
        else:
            if as_type is not None and last:
                declared = _TYPES.get(here)
                if declared is None or declared.lower() != as_type.lower():
                    return None
            plan.append((name,))
            last_types = (_type_name(_TYPES.get(here)),)
        element_type = _TYPES.get(here)
        type_path = element_type if element_type and element_type[0].isupper() else here

    def evaluate(resource: dict[str, Any]) -> list[Any]:
        return _walk_keys(resource, root, plan)

    first = plan[0] if plan else None
    if not plan or len(plan[-1]) == 1:
        # One key at the end: every value has the element's declared type.
        declared = last_types[0]
        return Walk(
            evaluate,
            lambda resource: [(v, declared) for v in _walk_keys(resource, root, plan)],
            first,
        )
    # A choice element: the JSON key of each value names its type.
    head, last_keys = plan[:-1], tuple(zip(plan[-1], last_types, strict=True))

    def typed(resource: dict[str, Any]) -> Typed:
        parents = _walk_keys(resource, root, head)
        found: Typed = []
        for value in parents:
            if isinstance(value, dict):
                for key, kind in last_keys:
                    item = value.get(key)
                    if isinstance(item, list):
                        found.extend((i, kind) for i in item)
                    elif item is not None:
                        found.append((item, kind))
        return found

    return Walk(evaluate, typed, first)


@dataclass(frozen=True)
class Walk:
    """A compiled path: its values, and the same values with their R4 types."""

    evaluate: Evaluate
    typed: EvaluateTyped
    keys: tuple[str, ...] | None = None  # the first step's JSON keys (see `Part.keys`)


def _walk_keys(resource: dict[str, Any], root: str, plan: list[tuple[str, ...]]) -> list[Any]:
    """The values under `plan`'s keys, step by step (`root`: the resource type it is for)."""
    if root and root not in ("Resource", "DomainResource") and resource.get("resourceType") != root:
        return []
    values: list[Any] = [resource]
    for keys in plan:
        found: list[Any] = []
        for value in values:
            if isinstance(value, dict):
                for key in keys:
                    item = value.get(key)
                    if isinstance(item, list):
                        found.extend(item)
                    elif item is not None:
                        found.append(item)
        values = found
        if not values:
            break
    return values


def _context_type(path: str) -> str:
    """The type path an element at `path` is described under (Observation.component stays)."""
    steps = path.split(".")
    type_path = steps[0]
    for name in steps[1:]:
        here = _ELSEWHERE.get(f"{type_path}.{name}", f"{type_path}.{name}")
        element_type = _TYPES.get(here)
        type_path = element_type if element_type and element_type[0].isupper() else here
    return type_path


_RELATIVE = re.compile(r"^(?P<path>[a-z]\w*(?:\.\w+)*)(?:\.as\((?P<type>\w+)\))?$")


def compile_relative(context: str, expression: str) -> list[Part]:
    """A composite component's expression, evaluated on elements found at `context`."""
    parts = []
    for p in split_union(expression):
        m = _RELATIVE.match(p)
        walker = _walker(m["path"], m["type"], context) if m else None
        if walker is None:
            raise ValueError(f"component expression '{p}' is not a path")
        parts.append(Part(walker.evaluate, typed_evaluate=walker.typed, keys=walker.keys))
    return parts


def plain_path(expression: str) -> str | None:
    """The path of a plain part such as `(Observation.value as Quantity)`, else None."""
    m = _PLAIN.match(_RESOLVE.sub("", expression))
    return m["path"] if m else None


def _fhirpath(expression: str) -> Evaluate:
    compiled = fhirpathpy.compile(expression, _MODEL)
    return lambda resource: list(compiled(resource, {}))


def compile_part(expression: str) -> Part:
    target = None
    found = _RESOLVE.search(expression)
    if found:
        target = found.group(1)
        expression = _RESOLVE.sub("", expression)
    m = _PLAIN.match(expression)
    if m and expression.count("(") == expression.count(")"):
        walker = _walker(m["path"], m["type"])
        if walker is not None:
            return Part(walker.evaluate, target, walker.typed, walker.keys)
    m = _AS_THEN.match(expression)
    if m:
        then = _then(m["path"], m["type"], m["rest"])
        if then is not None:
            return Part(then.evaluate, target, then.typed, then.keys)
    m = _WHERE_EQUALS.match(expression)
    walker = _walker(m["path"], None) if m else None
    if m and walker is not None and not _CHOICES.get(f"{_context_type(m['path'])}.{m['field']}"):
        kept = _keeping(walker, m["field"], m["value"])
        return Part(kept.evaluate, target, kept.typed, kept.keys)
    return Part(_fhirpath(expression), target)


# `(Observation.value as CodeableConcept).text`: a path under one type of a choice element.
_AS_THEN = re.compile(
    r"^\((?P<path>[A-Z]\w*(?:\.\w+)*) as (?P<type>\w+)\)\.(?P<rest>[a-z]\w*(?:\.\w+)*)$"
)


def _then(path: str, as_type: str, rest: str) -> Walk | None:
    """The walk of `rest` from each value of `path as as_type`."""
    head = _walker(path, as_type)
    if head is None or not as_type[:1].isupper():
        return None  # a primitive has no elements to walk into
    tail = _walker(rest, None, as_type)
    if tail is None:
        return None

    def evaluate(resource: dict[str, Any]) -> list[Any]:
        return [v for e in head.evaluate(resource) for v in tail.evaluate(e)]

    def typed(resource: dict[str, Any]) -> Typed:
        return [v for e in head.evaluate(resource) for v in tail.typed(e)]

    return Walk(evaluate, typed, head.keys)


def _keeping(walk: Walk, field: str, value: str) -> Walk:
    # FHIRPath `=` compares collections: a repeating field equals a string only when it holds
    # that one string; a missing one is empty, and empty is not equal (not true).
    def equal(held: Any) -> bool:
        return held == [value] if isinstance(held, list) else held == value

    def evaluate(resource: dict[str, Any]) -> list[Any]:
        return [e for e in walk.evaluate(resource) if isinstance(e, dict) and equal(e.get(field))]

    def typed(resource: dict[str, Any]) -> Typed:
        return [
            (e, kind)
            for e, kind in walk.typed(resource)
            if isinstance(e, dict) and equal(e.get(field))
        ]

    return Walk(evaluate, typed, walk.keys)


def compile_expression(expression: str) -> list[Part]:
    return [compile_part(p) for p in split_union(expression)]


def slow_parts(expression: str) -> list[Part]:
    """The same parts, all evaluated by fhirpathpy (for tests that compare the two)."""
    parts = []
    for p in split_union(expression):
        found = _RESOLVE.search(p)
        parts.append(Part(_fhirpath(_RESOLVE.sub("", p)), found.group(1) if found else None))
    return parts
