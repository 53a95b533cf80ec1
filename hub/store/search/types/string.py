"""string conditions: starts-with on the normalised text; `:exact`, `:contains`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Table, and_

from hub.search.types.base import MAX_STRING
from hub.search.values import normalise
from hub.store.schema import search_string
from hub.store.search.sql import like_escape, starts

if TYPE_CHECKING:
    from hub.search.registry import SearchParam

TABLE = search_string


def clause(
    param: SearchParam, modifier: str | None, value: str, base_url: str
) -> tuple[Table, ColumnElement[bool]]:
    t = TABLE
    if modifier == "exact":
        cond = t.c.exact == value[:MAX_STRING]
    elif modifier == "contains":
        cond = t.c.value.like("%" + like_escape(normalise(value)) + "%", escape="\\")
    else:
        cond = starts(t.c.value, normalise(value))
    return t, and_(t.c.param == param.code, cond)


def second(table: Any, value: str) -> ColumnElement[bool]:
    return starts(table.c.c2_text, normalise(value))
