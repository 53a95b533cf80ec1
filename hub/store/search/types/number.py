"""number conditions: the stored number against the searched one's range, by prefix."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Table, and_, or_

from hub.search.types.number import NumberValue
from hub.store.schema import search_number

if TYPE_CHECKING:
    from hub.search.registry import SearchParam

TABLE = search_number


def match(column: Any, v: NumberValue) -> ColumnElement[bool]:
    value, low, high = float(v.value), float(v.low), float(v.high)
    if v.prefix == "eq":
        return and_(column >= low, column < high)
    if v.prefix == "ne":
        return or_(column < low, column >= high)
    if v.prefix in ("gt", "sa"):
        return column > value
    if v.prefix in ("lt", "eb"):
        return column < value
    if v.prefix == "ge":
        return column >= value
    if v.prefix == "le":
        return column <= value
    spread = abs(value) * 0.1
    return and_(column >= value - spread, column <= value + spread)


def clause(
    param: SearchParam, modifier: str | None, value: NumberValue, base_url: str
) -> tuple[Table, ColumnElement[bool]]:
    t = TABLE
    return t, and_(t.c.param == param.code, match(t.c.value, value))


def second(table: Any, value: NumberValue) -> ColumnElement[bool]:
    return match(table.c.c2_value, value)
