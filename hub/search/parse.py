"""Reading a search's URL parameters: https://hl7.org/fhir/R4/search.html

Everything is checked against the registry. A parameter the hub cannot
apply is reported by name (400 by default and with `Prefer: handling=strict`;
with `handling=lenient` it is skipped and listed in the result's
OperationOutcome), because a silently ignored filter — a typo such as
`familly=` — would return every resource of the type.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from hub.errors import Invalid, Issue, Unsupported
from hub.fhir import is_resource_type
from hub.fhir.content import control_character, escaped
from hub.search.limits import Limits, distinct, identity
from hub.search.registry import RESULT_PARAMETERS, SPECIAL, Registry, SearchParam
from hub.search.types import TYPES
from hub.search.values import split_unescaped

SUMMARY_MODES = ("true", "false", "text", "data", "count")
TOTAL_MODES = ("none", "estimate", "accurate")


def split_or(value: str) -> list[str]:
    """The OR-ed values of a parameter, still escaped."""
    return split_unescaped(value, ",")


@dataclass(frozen=True)
class Criterion:
    """One search parameter with its OR-ed values.

    `chain` holds the reference parameters leading to `param` with the types
    each one points to: `subject:Patient.name=x` has chain ((subject, (Patient,)),),
    and `resource_types` are the types `param` is evaluated on (Patient).
    """

    resource_types: tuple[str, ...]
    param: SearchParam | None  # None: _id
    code: str
    modifier: str | None
    values: tuple[Any, ...]
    chain: tuple[tuple[SearchParam, tuple[str, ...]], ...] = ()
    has: tuple[tuple[str, SearchParam], ...] = ()  # _has: (source type, its reference param)
    root: str = ""  # the searched type this criterion filters
    name: str = field(default="", compare=False)  # the request's parameter, for errors


@dataclass(frozen=True)
class Include:
    source: str
    param: SearchParam | None  # None: every reference parameter ('*')
    target: str | None
    iterate: bool


@dataclass(frozen=True)
class SortKey:
    code: str
    param: SearchParam | None  # None for _id and _lastUpdated
    descending: bool


@dataclass
class SearchRequest:
    resource_types: tuple[str, ...]
    criteria: list[Criterion] = field(default_factory=list)
    sort: list[SortKey] = field(default_factory=list)
    count: int | None = None
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)
    total: str | None = None
    summary: str | None = None
    elements: tuple[str, ...] = ()
    cursor: dict[str, Any] | None = None
    warnings: list[Issue] = field(default_factory=list)
    # (name, value) of the parameters skipped under lenient handling: not in the self link.
    ignored: list[tuple[str, str]] = field(default_factory=list)


def parse_value(
    param: SearchParam | None, kind: str, modifier: str | None, raw: str, name: str
) -> Any:
    """One value of a parameter, checked by its type; a malformed one is a 400 naming it."""
    return TYPES[kind].parse(param, modifier, raw, name)


def _strict_error(strict: bool, request: SearchRequest, error: Unsupported | Invalid) -> None:
    if strict:
        raise error
    request.warnings.append(Issue("not-supported", error.message, "warning", error.expression))


def _link(
    registry: Registry,
    resource_types: tuple[str, ...],
    code: str,
    type_hint: str | None,
    next_code: str,
    name: str,
) -> tuple[SearchParam, tuple[str, ...]]:
    """A chain link: the reference parameter and the types it may lead to.

    Without a type (`subject.name`), every target type that has the next
    parameter is searched.
    """
    params = [p for t in resource_types if (p := registry.get(t, code)) is not None]
    if not params or any(p.type != "reference" for p in params):
        raise Unsupported(
            f"'{code}' in '{name}' is not a reference parameter of {', '.join(resource_types)}",
            expression=(name,),
        )
    targets = sorted({t for p in params for t in p.target_types()})
    if type_hint is not None:
        if type_hint not in targets:
            raise Invalid(f"'{name}': {code} does not point to {type_hint}", expression=(name,))
        return params[0], (type_hint,)
    reachable = tuple(
        t for t in targets if next_code in ("_id", "_has") or registry.get(t, next_code)
    )
    if not reachable:
        raise Unsupported(
            f"'{name}': no type that {code} points to has '{next_code}'", expression=(name,)
        )
    return params[0], reachable


def _criterion(
    registry: Registry,
    resource_type: str,
    name: str,
    value: str,
    limits: Limits | None,
    depth: int = 0,
    whole: str = "",
) -> Criterion:
    """`whole` is the request's parameter when `name` is the part of it inside a `_has`."""
    whole = whole or name
    if name.startswith("_has:"):
        if limits is not None:
            limits.check_has(whole, depth + 1)
        pieces = name.split(":")
        if len(pieces) < 4 or not is_resource_type(pieces[1]):
            raise Invalid(f"'{name}' is not _has:Type:reference:parameter", expression=(name,))
        source, ref_code = pieces[1], pieces[2]
        ref = registry.get(source, ref_code)
        if ref is None or ref.type != "reference":
            raise Unsupported(
                f"'{ref_code}' is not a reference parameter of {source}", expression=(name,)
            )
        inner = _criterion(registry, source, ":".join(pieces[3:]), value, limits, depth + 1, whole)
        return Criterion(
            inner.resource_types,
            inner.param,
            inner.code,
            inner.modifier,
            inner.values,
            inner.chain,
            ((source, ref), *inner.has),
        )
    links = name.split(".")
    if limits is not None:
        limits.check_chain(whole, len(links) - 1)
    raw = distinct(split_or(value))
    if limits is not None:
        limits.check_or_values(whole, len(raw))
    chain: list[tuple[SearchParam, tuple[str, ...]]] = []
    current: tuple[str, ...] = (resource_type,)
    for i, link in enumerate(links[:-1]):
        code, _, hint = link.partition(":")
        next_code = links[i + 1].split(":")[0]
        param_link, current = _link(registry, current, code, hint or None, next_code, name)
        chain.append((param_link, current))
    code, _, modifier = links[-1].partition(":")
    if code == "_id":
        if modifier:
            raise Unsupported(
                f"The modifier ':{modifier}' of '{name}' is not supported", expression=(name,)
            )
        ids = distinct([parse_value(None, "special", None, v, name) for v in raw])
        return Criterion(current, None, code, None, ids, tuple(chain))
    found = [p for t in current if (p := registry.get(t, code)) is not None]
    if not found:
        raise Unsupported(
            f"Unknown search parameter '{code}' for resource type {', '.join(current)}",
            expression=(name,),
        )
    param = found[0]
    if modifier:
        allowed = TYPES[param.type].MODIFIERS
        is_type = param.type == "reference" and modifier in param.target_types()
        if modifier not in allowed and not is_type:
            raise Unsupported(
                f"The modifier ':{modifier}' is not supported on '{code}' ({param.type})",
                expression=(name,),
            )
    if modifier == "missing":
        if value not in ("true", "false"):
            raise Invalid(f"'{name}' takes true or false", expression=(name,))
        return Criterion(current, param, code, modifier, (value == "true",), tuple(chain))
    values = distinct([parse_value(param, param.type, modifier, v, name) for v in raw])
    if param.type == "reference" and modifier:
        modifier = ""  # a target type, which the values name now (`Patient/123`)
    return Criterion(current, param, code, modifier or None, values, tuple(chain))


def _include(registry: Registry, raw: str, name: str, reverse: bool) -> Include:
    pieces = raw.split(":")
    iterate = name.endswith(":iterate") or name.endswith(":recurse")
    if pieces == ["*"]:
        return Include("*", None, None, iterate)
    if len(pieces) < 2 or not is_resource_type(pieces[0]):
        raise Invalid(f"{name}={raw} is not Type:parameter[:targetType]", expression=(name,))
    source, code = pieces[0], pieces[1]
    target = pieces[2] if len(pieces) > 2 else None
    if code == "*":
        return Include(source, None, target, iterate)
    param = registry.get(source, code)
    if param is None or param.type != "reference":
        raise Unsupported(
            f"{name}: '{code}' is not a reference parameter of {source}", expression=(name,)
        )
    if target is not None and target not in param.target_types():
        raise Invalid(f"{name}: {source}.{code} does not point to {target}", expression=(name,))
    return Include(source, param, target, iterate)


def decode_cursor(value: str) -> dict[str, Any]:
    try:
        data = orjson.loads(base64.urlsafe_b64decode(value.encode() + b"=="))
    except (ValueError, orjson.JSONDecodeError):
        raise Invalid(
            "The paging cursor is damaged; start the search again", expression=("_cursor",)
        ) from None
    if not isinstance(data, dict):
        raise Invalid("The paging cursor is damaged", expression=("_cursor",))
    return data


def encode_cursor(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(data)).decode().rstrip("=")


def parse(
    registry: Registry,
    resource_types: Sequence[str],
    params: Sequence[tuple[str, str]],
    *,
    strict: bool = True,
    max_count: int = 1000,
    limits: Limits | None = None,
) -> SearchRequest:
    """The search `params` ask for; `limits` refuses one too costly to run (`hub.search.limits`).

    Identical criteria are kept once (AND of a condition with itself is that condition), so a
    parameter repeated any number of times costs what it costs once.
    """
    request = SearchRequest(tuple(resource_types))
    seen: set[tuple[str, str]] = set()
    kept: set[tuple[Any, ...]] = set()
    per_type: dict[str, tuple[int, int]] = {}  # criteria and their values, by searched type
    for name, value in params:
        control = control_character(name + value)
        if control is not None:
            # Nothing stored holds one (writes refuse them), and PostgreSQL cannot take U+0000.
            raise Invalid(
                f"Search parameter '{escaped(name)}' holds the control character "
                f"U+{ord(control):04X}",
                expression=(escaped(name),),
            )
        code = name.split(":")[0]
        try:
            if code in RESULT_PARAMETERS or code in ("_cursor", "_type"):
                _result_parameter(registry, request, name, code, value, max_count, limits)
                continue
            if value == "" and not name.startswith("_has"):
                continue
            if (name, value) in seen:
                continue
            seen.add((name, value))
            for resource_type in resource_types:
                found = _criterion(registry, resource_type, name, value, limits)
                criterion = replace(found, root=resource_type, name=name)
                if identity(criterion) in kept:
                    continue
                kept.add(identity(criterion))
                criteria, values = per_type.get(resource_type, (0, 0))
                per_type[resource_type] = (criteria + 1, values + len(criterion.values))
                if limits is not None:
                    limits.check_criteria(name, criteria + 1)
                    limits.check_or_values(name, values + len(criterion.values))
                request.criteria.append(criterion)
        except Unsupported as e:
            _strict_error(strict, request, e)
            request.ignored.append((name, value))
    return request


def parse_count(value: str, maximum: int) -> int:
    """`_count` of a search or history: a non-negative integer, capped at `maximum`."""
    if not value.isdigit():
        raise Invalid(
            f"_count must be a non-negative integer, not '{value}'", expression=("_count",)
        )
    return min(int(value), maximum)


def _result_parameter(
    registry: Registry,
    request: SearchRequest,
    name: str,
    code: str,
    value: str,
    max_count: int,
    limits: Limits | None = None,
) -> None:
    if code == "_count":
        request.count = parse_count(value, max_count)
    elif code == "_sort":
        for key in value.split(","):
            descending = key.startswith("-")
            key_code = key.lstrip("-")
            if any(k.code == key_code for k in request.sort):
                continue  # a key already sorted by decides nothing more, whatever its direction
            if limits is not None:
                limits.check_sort(len(request.sort) + 1)
            if key_code in ("_id", "_lastUpdated"):
                request.sort.append(SortKey(key_code, None, descending))
                continue
            params = [registry.get(t, key_code) for t in request.resource_types]
            if not params or any(p is None for p in params):
                raise Unsupported(
                    f"_sort: unknown search parameter '{key_code}'", expression=("_sort",)
                )
            if any(p is not None and TYPES[p.type].sort_column(False) is None for p in params):
                raise Unsupported(
                    f"_sort: cannot sort by the composite '{key_code}'", expression=("_sort",)
                )
            request.sort.append(SortKey(key_code, params[0], descending))
    elif code == "_include":
        found = _include(registry, value, name, False)
        if found not in request.includes:  # the same include twice finds the same resources
            request.includes.append(found)
    elif code == "_revinclude":
        found = _include(registry, value, name, True)
        if found not in request.revincludes:
            request.revincludes.append(found)
    elif code == "_total":
        if value not in TOTAL_MODES:
            raise Invalid(
                f"_total takes none, estimate or accurate, not '{value}'", expression=("_total",)
            )
        request.total = value
    elif code == "_totalMethod":
        # Aidbox's spelling, which fhirpy's count() sends: count is an accurate total.
        methods = {"count": "accurate", "estimate": "estimate", "none": "none"}
        if value not in methods:
            raise Invalid(
                f"_totalMethod takes count, estimate or none, not '{value}'",
                expression=("_totalMethod",),
            )
        request.total = methods[value]
    elif code == "_summary":
        if value not in SUMMARY_MODES:
            raise Invalid(
                f"_summary takes true, text, data, count or false, not '{value}'",
                expression=("_summary",),
            )
        request.summary = None if value == "false" else value
    elif code == "_elements":
        request.elements = tuple(e.strip() for e in value.split(",") if e.strip())
    elif code == "_cursor":
        request.cursor = decode_cursor(value)
    elif code in ("_contained", "_containedType"):
        raise Unsupported(f"{code} is not supported", expression=(code,))
    # _format, _pretty, _type and _page are read elsewhere or do not change the result.


__all__ = ["SPECIAL", "Criterion", "Include", "SearchRequest", "SortKey", "parse"]
