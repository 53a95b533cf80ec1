"""reference conditions: target type and id, or the url as stored."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Table, and_

from hub.store.schema import search_reference

if TYPE_CHECKING:
    from hub.search.registry import SearchParam

TABLE = search_reference


def clause(
    param: SearchParam, modifier: str | None, value: str, base_url: str
) -> tuple[Table, ColumnElement[bool]]:
    t = TABLE
    if value.startswith(base_url + "/"):
        value = value[len(base_url) + 1 :]
    pieces = value.split("/")
    if "://" not in value and len(pieces) == 2 and pieces[0][:1].isupper():
        cond = and_(t.c.target_type == pieces[0], t.c.target_id == pieces[1])
    elif "://" in value or "|" in value:
        cond = t.c.url == value
    else:
        targets = param.target_types()
        cond = t.c.target_id == value
        if len(targets) < 100:
            cond = and_(cond, t.c.target_type.in_(targets))
    return t, and_(t.c.param == param.code, cond)


def second(table: Any, value: str) -> ColumnElement[bool]:
    return table.c.c2_code == value  # composite rows hold `Type/id`
