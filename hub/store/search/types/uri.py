"""uri conditions: equality, `:below` (a prefix of the stored uri), `:above`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Table, and_, func, literal

from hub.store.schema import search_uri
from hub.store.search.sql import starts
from hub.store.search.types import token

if TYPE_CHECKING:
    from hub.search.registry import SearchParam

TABLE = search_uri


def clause(
    param: SearchParam, modifier: str | None, value: str, base_url: str
) -> tuple[Table, ColumnElement[bool]]:
    t = TABLE
    if modifier == "below":
        # LIKE narrows by index; substr keeps it case-sensitive (SQLite's LIKE is not).
        prefix = func.substr(t.c.value, 1, len(value)) == value
        cond = and_(starts(t.c.value, value), prefix)
    elif modifier == "above":
        # The stored uri is a prefix of the value: compared, never used as a LIKE pattern.
        cond = func.substr(literal(value), 1, func.length(t.c.value)) == t.c.value
    else:
        cond = t.c.value == value
    return t, and_(t.c.param == param.code, cond)


def second(table: Any, value: Any) -> ColumnElement[bool]:
    return token.second(table, value)  # kept in the token columns (`hub.search.types.uri`)
