"""The search parameter registry: which parameters each resource type has.

Built once at start-up from data (the hub's compact definitions in
`definitions.json`) and passed to whoever needs it; never a mutable global.
A definition names its code, type, the resource types it applies to and the
FHIRPath expression that extracts its values at write time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources as package_files
from typing import Any

import fhirpathpy

# Parameters the store answers from its own columns, valid on every type.
SPECIAL = {"_id": "token"}
# Result parameters: they shape the answer, they are not filters.
RESULT_PARAMETERS = frozenset({"_count", "_format", "_pretty", "_total", "_page_after"})


@dataclass(frozen=True)
class SearchParam:
    code: str
    type: str
    expression: str
    base: tuple[str, ...]
    url: str | None = None
    evaluate: Callable[[Any], list[Any]] = field(repr=False, compare=False, default=lambda r: [])


@dataclass(frozen=True)
class Registry:
    by_type: Mapping[str, Mapping[str, SearchParam]]

    def get(self, resource_type: str, code: str) -> SearchParam | None:
        return self.by_type.get(resource_type, {}).get(code)

    def for_type(self, resource_type: str) -> Mapping[str, SearchParam]:
        return self.by_type.get(resource_type, {})

    def indexed(self, resource_type: str) -> Iterable[SearchParam]:
        return self.by_type.get(resource_type, {}).values()


def _compile(expression: str) -> Callable[[Any], list[Any]]:
    compiled = fhirpathpy.compile(expression, None)
    return lambda resource: compiled(resource, {})


def build(definitions: Iterable[Mapping[str, Any]]) -> Registry:
    by_type: dict[str, dict[str, SearchParam]] = {}
    for d in definitions:
        base = tuple(d["base"])
        param = SearchParam(
            code=d["code"],
            type=d["type"],
            expression=d["expression"],
            base=base,
            url=d.get("url"),
            evaluate=_compile(d["expression"]),
        )
        for resource_type in base:
            by_type.setdefault(resource_type, {})[param.code] = param
    return Registry(by_type)


def load_default() -> Registry:
    text = package_files.files("hub.search").joinpath("definitions.json").read_text()
    return build(_expand(json.loads(text)))


def _expand(compact: Mapping[str, Mapping[str, list[str]]]) -> Iterable[dict[str, Any]]:
    """Turn `{"Patient": {"identifier": ["token", "Patient.identifier"]}}` into definitions."""
    for resource_type, params in compact.items():
        for code, (param_type, expression) in params.items():
            yield {
                "code": code,
                "type": param_type,
                "expression": expression,
                "base": [resource_type],
            }
