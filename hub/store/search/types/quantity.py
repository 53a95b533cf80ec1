"""quantity conditions: the number, and the system and code (or the unit)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Table, and_, or_

from hub.search.types.number import NumberValue
from hub.store.schema import search_quantity
from hub.store.search.types import number

if TYPE_CHECKING:
    from hub.search.registry import SearchParam

TABLE = search_quantity


def match(table: Any, v: NumberValue, prefix: str = "") -> ColumnElement[bool]:
    value_col = table.c[f"{prefix}value"]
    conds = [number.match(value_col, v)]
    system_col, code_col = table.c[f"{prefix}system"], table.c[f"{prefix}code"]
    if v.by_unit and v.code:
        unit = table.c.unit if not prefix else code_col
        conds.append(or_(code_col == v.code, unit == v.code))
    else:
        if v.system:
            conds.append(system_col == v.system)
        if v.code:
            conds.append(code_col == v.code)
    return and_(*conds)


def clause(
    param: SearchParam, modifier: str | None, value: NumberValue, base_url: str
) -> tuple[Table, ColumnElement[bool]]:
    t = TABLE
    return t, and_(t.c.param == param.code, match(t, value))


def second(table: Any, value: NumberValue) -> ColumnElement[bool]:
    return match(table, value, prefix="c2_")
