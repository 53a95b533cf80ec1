"""The search parameter registry: which parameters each resource type has.

Built once at start-up from data and passed to whoever needs it, never a
mutable global. Two sources feed it: the hub's compact definitions
(`definitions.json`, one line per parameter: type, expression, reference
targets or composite components) and SearchParameter resources, such as the
official R4 bundle loaded with `hub definitions load` or ones created through
the REST API.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources as package_files
from typing import Any

from hub.fhir import R4_RESOURCE_TYPES, holds_one
from hub.search.paths import Part, compile_expression, compile_relative, plain_path, split_union
from hub.search.types import TYPES, special

# The types a definition may have: `special` ones are the hub's own, not definable.
SUPPORTED_TYPES = frozenset(TYPES) - {"special"}
# Parameters the store answers from its own columns, valid on every type.
SPECIAL = special.PARAMETERS
# Result parameters: they shape the answer, they are not filters.
RESULT_PARAMETERS = frozenset(
    {
        "_count",
        "_format",
        "_pretty",
        "_total",
        "_totalMethod",
        "_sort",
        "_include",
        "_revinclude",
        "_summary",
        "_elements",
        "_page",
        "_contained",
        "_containedType",
    }
)
COMMON = "Resource"


@dataclass(frozen=True)
class Component:
    """A composite's component: its evaluation on the elements of each part of the base."""

    code: str
    type: str
    per_part: tuple[tuple[Part, ...], ...]
    expression: str = ""  # relative to each part of the base


@dataclass(frozen=True)
class SearchParam:
    code: str
    type: str
    expression: str
    base: tuple[str, ...]
    targets: tuple[str, ...] = ()
    url: str | None = None
    parts: tuple[Part, ...] = field(default=(), repr=False, compare=False)
    components: tuple[Component, ...] = field(default=(), repr=False, compare=False)
    single: bool = field(default=False, compare=False)  # a resource has one value at most
    # The definition's canonical URL when it is the hub's own, not one of the R4 spec.
    canonical: str | None = field(default=None, compare=False)

    def target_types(self) -> tuple[str, ...]:
        return tuple(sorted(R4_RESOURCE_TYPES)) if "*" in self.targets else self.targets


@dataclass(frozen=True)
class Unsupported:
    """A definition the registry could not take, and why."""

    code: str
    base: tuple[str, ...]
    reason: str
    url: str | None = None


@dataclass(frozen=True)
class Registry:
    by_type: Mapping[str, Mapping[str, SearchParam]]
    unsupported: tuple[Unsupported, ...] = ()
    # Compartment type -> resource type -> the parameters that put a resource in it.
    compartments: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)
    # (type, token parameter, date parameter) -> a composite of the two (see `paired`).
    pairs: Mapping[tuple[str, str, str], SearchParam] = field(default_factory=dict)

    def compartment(self, compartment: str, resource_type: str) -> tuple[str, ...]:
        """Parameters of `resource_type` linking it into a compartment (indexed ones only)."""
        codes = self.compartments.get(compartment, {}).get(resource_type, ())
        return tuple(c for c in codes if self.get(resource_type, c) is not None)

    def get(self, resource_type: str, code: str) -> SearchParam | None:
        found = self.by_type.get(resource_type, {}).get(code)
        return found if found is not None else self.by_type.get(COMMON, {}).get(code)

    def for_type(self, resource_type: str) -> dict[str, SearchParam]:
        return {**self.by_type.get(COMMON, {}), **self.by_type.get(resource_type, {})}

    def indexed(self, resource_type: str) -> Iterable[SearchParam]:
        return self.for_type(resource_type).values()

    def paired(self, resource_type: str, token: str, date: str) -> SearchParam | None:
        """A composite whose rows are exactly the `token` values of a resource, each with its
        one `date` value: criteria on both are met by one of its rows (`QueryBuilder`)."""
        return self.pairs.get((resource_type, token, date))

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_type.values())


def _for_base(expression: str, resource_type: str) -> str:
    """The parts of a multi-type expression that concern one type."""
    keep = [
        p
        for p in split_union(expression)
        if p.lstrip("(").startswith(f"{resource_type}.") or p.lstrip("(") == resource_type
    ]
    return " | ".join(keep)


def make_param(
    code: str,
    kind: str,
    expression: str,
    base: str,
    *,
    targets: Iterable[str] = (),
    components: Iterable[tuple[str, str]] = (),
    url: str | None = None,
    siblings: Mapping[str, tuple[str, ...]] | None = None,
    canonical: str | None = None,
) -> SearchParam:
    """One parameter for one base type; raises ValueError when it cannot be supported."""
    if kind not in SUPPORTED_TYPES:
        raise ValueError(f"search parameter type '{kind}' is not supported")
    if not expression:
        raise ValueError("the definition has no expression")
    own = _for_base(expression, base)
    if not own:
        raise ValueError(f"the expression has no part for {base}")
    try:
        parts = tuple(compile_expression(own))
        for part in parts:  # fhirpathpy notices some syntax errors only when it evaluates
            part.evaluate({"resourceType": base})
    except Exception as e:  # fhirpathpy raises plain exceptions on syntax it lacks
        raise ValueError(f"the expression cannot be evaluated: {e}") from None
    comps: list[Component] = []
    contexts = [plain_path(p) for p in split_union(own)]
    for comp_code, comp_expr in components:
        comp_type = (siblings or {}).get(comp_code, ("token",))[0]
        if any(c is None for c in contexts):
            raise ValueError("a composite's base must be a path")
        per_part = tuple(tuple(compile_relative(str(c), comp_expr)) for c in contexts)
        comps.append(Component(comp_code, comp_type, per_part, comp_expr))
    if kind == "composite" and len(comps) != 2:
        raise ValueError("only composites of two components are supported")
    path = plain_path(own) if len(parts) == 1 else None
    single = path is not None and holds_one(path)
    return SearchParam(
        code, kind, own, (base,), tuple(targets), url, parts, tuple(comps), single, canonical
    )


def _compact(data: Mapping[str, Mapping[str, list[Any]]]) -> Iterator[SearchParam]:
    for base, params in data.items():
        siblings = {code: (spec[0],) for code, spec in params.items()}
        for code, spec in params.items():
            kind, expression = spec[0], spec[1]
            extra = spec[2] if len(spec) > 2 else []
            yield make_param(
                code,
                kind,
                expression,
                base,
                targets=extra if kind == "reference" else (),
                components=[tuple(c) for c in extra] if kind == "composite" else (),
                siblings=siblings,
                canonical=spec[3] if len(spec) > 3 else None,
            )


def assemble(params: Iterable[SearchParam], unsupported: Iterable[Unsupported] = ()) -> Registry:
    """A registry of these parameters (later ones win) and the compartment definitions."""
    by_type: dict[str, dict[str, SearchParam]] = {}
    for p in params:
        for base in p.base:
            by_type.setdefault(base, {})[p.code] = p
    text = package_files.files("hub.search").joinpath("compartments.json").read_text()
    compartments = {
        name: {t: tuple(codes) for t, codes in members.items()}
        for name, members in json.loads(text).items()
    }
    return Registry(by_type, tuple(unsupported), compartments, _pairs(by_type))


def _pairs(
    by_type: Mapping[str, Mapping[str, SearchParam]],
) -> dict[tuple[str, str, str], SearchParam]:
    """Composites of a token parameter and a one-valued date parameter, on the same elements:
    their base is the resource itself and each component's expression is that parameter's."""
    found: dict[tuple[str, str, str], SearchParam] = {}
    for resource_type, params in by_type.items():
        for p in params.values():
            if p.type != "composite" or p.expression != resource_type or len(p.components) != 2:
                continue
            first, second = p.components
            token, date = params.get(first.code), params.get(second.code)
            if (
                token is not None
                and date is not None
                and (token.type, date.type, second.type) == ("token", "date", "date")
                and date.single
                and token.expression == f"{resource_type}.{first.expression}"
                and date.expression == f"{resource_type}.{second.expression}"
            ):
                found[(resource_type, token.code, date.code)] = p
    return found


def default_definitions() -> dict[str, dict[str, list[Any]]]:
    text = package_files.files("hub.search").joinpath("definitions.json").read_text()
    data: dict[str, dict[str, list[Any]]] = json.loads(text)
    return data


def shipped_params() -> list[SearchParam]:
    """The parameters of the shipped compact definitions."""
    return list(_compact(default_definitions()))


def load_default(extra: Iterable[Mapping[str, Any]] = ()) -> Registry:
    """The shipped definitions, plus SearchParameter resources (later ones win)."""
    params = shipped_params()
    added, unsupported = from_resources(extra, params)
    return assemble([*params, *added], unsupported)


def from_resources(
    resources: Iterable[Mapping[str, Any]], known: Iterable[SearchParam] = ()
) -> tuple[list[SearchParam], list[Unsupported]]:
    """SearchParameter resources as registry entries, with the reason for each refused one."""
    resources = list(resources)
    by_url = {r.get("url"): r for r in resources if r.get("url")}
    kinds: dict[str, dict[str, tuple[str, ...]]] = {}  # base -> code -> (type,)
    for p in known:
        for b in p.base:
            kinds.setdefault(b, {})[p.code] = (p.type,)
    for r in resources:
        for b in r.get("base") or []:
            kinds.setdefault(b, {})[r.get("code", "")] = (r.get("type", ""),)
    params: list[SearchParam] = []
    refused: list[Unsupported] = []
    for r in resources:
        code, kind = r.get("code", ""), r.get("type", "")
        bases = tuple(r.get("base") or ())
        url = r.get("url")
        if not code or not bases:
            refused.append(
                Unsupported(code or "?", bases, "the definition has no code or base", url)
            )
            continue
        if code in SPECIAL or code in RESULT_PARAMETERS:
            refused.append(Unsupported(code, bases, "answered by the hub itself, not indexed", url))
            continue
        comps: list[tuple[str, str]] = []
        for c in r.get("component") or []:
            definition = by_url.get(c.get("definition"))
            comp_code = definition.get("code") if definition else str(c.get("definition"))
            comps.append((str(comp_code), str(c.get("expression", ""))))
        for base in bases:
            base_name = COMMON if base in ("Resource", "DomainResource") else base
            siblings = {**kinds.get(base, {}), **kinds.get(base_name, {})}
            try:
                params.append(
                    make_param(
                        code,
                        kind,
                        r.get("expression") or "",
                        base_name,
                        targets=r.get("target") or (),
                        components=comps,
                        url=url,
                        siblings=siblings,
                    )
                )
            except ValueError as e:
                refused.append(Unsupported(code, (base,), str(e), url))
    return params, refused


def bundle_resources(bundle: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The SearchParameter resources of a Bundle (or a single SearchParameter)."""
    if bundle.get("resourceType") == "SearchParameter":
        return [dict(bundle)]
    return [
        e["resource"]
        for e in bundle.get("entry", [])
        if isinstance(e, dict) and e.get("resource", {}).get("resourceType") == "SearchParameter"
    ]
