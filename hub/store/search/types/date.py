"""date conditions: the stored range [low, high) against the searched one, by prefix."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Table, and_, or_

from hub.search.types.date import DateValue
from hub.store.schema import search_date

if TYPE_CHECKING:
    from hub.search.registry import SearchParam

TABLE = search_date


def match(low: Any, high: Any, v: DateValue) -> ColumnElement[bool]:
    contained = and_(low >= v.low, high <= v.high)
    if v.prefix == "eq":
        return contained
    if v.prefix == "ne":
        return or_(low < v.low, high > v.high)
    if v.prefix == "gt":
        return high > v.high
    if v.prefix == "lt":
        return low < v.low
    # ge and le add a bound both of their alternatives imply (low <= high): one an index on
    # `high` (`low`) can range over, which the OR alone is not.
    if v.prefix == "ge":
        return and_(high >= v.low, or_(high > v.high, contained))
    if v.prefix == "le":
        return and_(low <= v.high, or_(low < v.low, contained))
    if v.prefix == "sa":
        return low >= v.high
    if v.prefix == "eb":
        return high <= v.low
    # ap: overlap with the value widened by a tenth of its distance from now (at least a day).
    gap = max(abs(datetime.now(UTC) - v.low) / 10, timedelta(days=1))
    return and_(low < v.high + gap, high > v.low - gap)


def clause(
    param: SearchParam, modifier: str | None, value: DateValue, base_url: str
) -> tuple[Table, ColumnElement[bool]]:
    t = TABLE
    return t, and_(t.c.param == param.code, match(t.c.low, t.c.high, value))


def second(table: Any, value: DateValue) -> ColumnElement[bool]:
    return match(table.c.c2_low, table.c.c2_high, value)
