"""Turning search parameters from a URL into a store `Query`.

Every parameter is checked against the registry; one the hub cannot apply is
reported by name, never silently dropped, because an ignored filter (say a
typo such as `identifer=`) would return every resource of the type.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from hub.errors import Invalid, Unsupported
from hub.search.registry import RESULT_PARAMETERS, Registry
from hub.store.repository import Query, TokenCriterion

_UNESCAPED_COMMA = re.compile(r"(?<!\\),")
_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


def _unescape(value: str) -> str:
    return value.replace("\\,", ",").replace("\\|", "|").replace("\\$", "$").replace("\\\\", "\\")


def split_or(value: str) -> list[str]:
    return [_unescape(v) for v in _UNESCAPED_COMMA.split(value)]


def parse_token(value: str) -> tuple[str | None, str | None]:
    """`code`, `system|code`, `|code` (no system) and `system|` (any code)."""
    parts = _UNESCAPED_PIPE.split(value, maxsplit=1)
    if len(parts) == 1:
        return None, _unescape(parts[0])
    system, code = _unescape(parts[0]), _unescape(parts[1])
    return system, (code or None)


def build_query(registry: Registry, resource_type: str, params: Sequence[tuple[str, str]]) -> Query:
    ids: set[str] | None = None
    tokens: list[TokenCriterion] = []
    for name, value in params:
        code, _, modifier = name.partition(":")
        if code in RESULT_PARAMETERS:
            continue
        if modifier:
            raise Unsupported(
                f"The modifier ':{modifier}' of search parameter '{name}' is not supported",
                expression=(name,),
            )
        if value == "":
            continue
        if code == "_id":
            wanted = set(split_or(value))
            ids = wanted if ids is None else ids & wanted
            continue
        param = registry.get(resource_type, code)
        if param is None:
            raise Unsupported(
                f"Unknown search parameter '{code}' for resource type {resource_type}",
                expression=(name,),
            )
        if param.type != "token":
            raise Unsupported(
                f"Search parameter '{code}' of type {param.type} is not supported",
                expression=(name,),
            )
        values = tuple(parse_token(v) for v in split_or(value))
        if any(system is None and code_ is None for system, code_ in values):
            raise Invalid(f"Search parameter '{code}' has an empty token", expression=(name,))
        tokens.append(TokenCriterion(code, values))
    return Query(
        resource_type=resource_type,
        ids=tuple(sorted(ids)) if ids is not None else None,
        tokens=tuple(tokens),
    )
