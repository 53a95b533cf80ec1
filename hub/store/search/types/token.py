"""token conditions: system and code; `:text` on the codes' texts, `:of-type` on
identifiers' types (`:not` is the query's, around these)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Table, and_, true

from hub.search.types.base import MAX_STRING
from hub.search.values import normalise
from hub.store.schema import search_string, search_token
from hub.store.search.sql import starts

if TYPE_CHECKING:
    from hub.search.registry import SearchParam

TABLE = search_token


def match(
    system_col: Any, code_col: Any, value: tuple[str | None, str | None]
) -> ColumnElement[bool]:
    system, code = value
    conds = []
    if code is not None:
        conds.append(code_col == code[:MAX_STRING])  # as indexed
    if system == "":
        conds.append(system_col.is_(None))
    elif system is not None:
        conds.append(system_col == system[:MAX_STRING])
    return and_(*conds) if conds else true()


def clause(
    param: SearchParam, modifier: str | None, value: Any, base_url: str
) -> tuple[Table, ColumnElement[bool]]:
    if modifier == "text":
        s = search_string
        return s, and_(s.c.param == f"{param.code}:text", starts(s.c.value, normalise(value)))
    t = TABLE
    code = f"{param.code}:of-type" if modifier == "of-type" else param.code
    return t, and_(t.c.param == code, match(t.c.system, t.c.code, value))


def second(table: Any, value: tuple[str | None, str | None]) -> ColumnElement[bool]:
    return match(table.c.c2_system, table.c.c2_code, value)
