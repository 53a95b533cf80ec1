"""composite conditions: the first component's token and the second's condition, on one row."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Table, and_

from hub.store.schema import search_composite
from hub.store.search import types
from hub.store.search.types import token
from hub.store.search.types.base import not_a_component

if TYPE_CHECKING:
    from hub.search.registry import SearchParam

TABLE = search_composite
second = not_a_component


def match(table: Any, param: SearchParam, value: tuple[Any, Any]) -> ColumnElement[bool]:
    first, rest = value
    return and_(
        token.match(table.c.c1_system, table.c.c1_code, first),
        types.TYPES[param.components[1].type].second(table, rest),
    )


def clause(
    param: SearchParam, modifier: str | None, value: tuple[Any, Any], base_url: str
) -> tuple[Table, ColumnElement[bool]]:
    t = TABLE
    return t, and_(t.c.param == param.code, match(t, param, value))
