"""date: a value stands for the range of its precision, compared by prefix.

https://hl7.org/fhir/R4/search.html#date. Indexed from date, dateTime,
instant, Period and Timing elements, each as the range [low, high) it covers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hub.errors import Invalid
from hub.search.types.base import Rows, prefixed
from hub.search.values import HIGHEST, LOWEST, date_range

if TYPE_CHECKING:
    from hub.search.registry import SearchParam

TABLE = "search_date"
MODIFIERS = frozenset({"missing"})
ONE_ROW_PER_VALUE = True
_INSTANTS = frozenset({"date", "dateTime", "instant"})
Range = tuple[datetime, datetime]


@dataclass(frozen=True)
class DateValue:
    prefix: str
    low: datetime
    high: datetime


def parse(param: SearchParam | None, modifier: str | None, raw: str, name: str) -> DateValue:
    prefix, text = prefixed(raw)
    found = date_range(text)
    if found is None:
        raise Invalid(
            f"Search parameter '{name}': '{raw}' is not a date, dateTime or "
            "instant (with an optional prefix such as ge)",
            expression=(name,),
        )
    return DateValue(prefix, *found)


def _period(value: dict[str, Any]) -> list[Range]:
    start = date_range(value["start"]) if isinstance(value.get("start"), str) else None
    end = date_range(value["end"]) if isinstance(value.get("end"), str) else None
    if start is None and end is None:
        return []
    low, high = start[0] if start else LOWEST, end[1] if end else HIGHEST
    if start and high < low:
        # An end before the start (in UTC; the model does not check per-1): the range is
        # the start's, so that low <= high, which the searches' bounds rely on.
        high = start[1]
    return [(low, high)]


def _timing(value: dict[str, Any]) -> list[Range]:
    ranges = [r for e in value.get("event", []) for r in ranges_of(e, "dateTime")]
    bounds = value.get("repeat", {}).get("boundsPeriod")
    if isinstance(bounds, dict):
        ranges.extend(_period(bounds))
    if ranges:
        return [(min(r[0] for r in ranges), max(r[1] for r in ranges))]
    return []


def ranges_of(value: Any, element_type: str | None) -> list[Range]:
    """The ranges one value covers, by its R4 type (a string that looks like a date is not
    one: only date, dateTime, instant, Period and Timing elements hold dates)."""
    if element_type is None:
        return _shaped(value)
    if element_type in _INSTANTS:
        found = date_range(value) if isinstance(value, str) else None
        return [found] if found else []
    if not isinstance(value, dict):
        return []
    if element_type == "Period":
        return _period(value)
    if element_type == "Timing":
        return _timing(value)
    return []


def _shaped(value: Any) -> list[Range]:
    # A value of unknown type (an expression fhirpathpy evaluates, such as an extension's
    # value[x]): a string that reads as a date is one; a Period or Timing by its keys.
    if isinstance(value, str):
        found = date_range(value)
        return [found] if found else []
    if not isinstance(value, dict):
        return []
    if "start" in value or "end" in value:
        return _period(value)
    if "event" in value or "repeat" in value:
        return _timing(value)
    return []


def index(
    rows: Rows,
    param: SearchParam,
    value: Any,
    element_type: str | None,
    target: str | None,
    part: int,
) -> None:
    for low, high in ranges_of(value, element_type):
        rows.add(TABLE, param=param.code, low=low, high=high)


def component(value: Any, element_type: str | None) -> list[dict[str, Any]]:
    return [{"c2_low": low, "c2_high": high} for low, high in ranges_of(value, element_type)]


def sort_column(descending: bool) -> str:
    return "high" if descending else "low"


def row_order(descending: bool) -> tuple[str, ...]:
    return ("high", "low") if descending else ("low", "high")
