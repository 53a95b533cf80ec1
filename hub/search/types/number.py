"""number: prefixes and implicit precision (`5.4` is [5.35, 5.45)).

https://hl7.org/fhir/R4/search.html#number. Indexed from decimal and integer
elements.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from hub.errors import Invalid
from hub.search.types.base import Rows, prefixed
from hub.search.values import decimal_range, split_unescaped, unescape

if TYPE_CHECKING:
    from hub.search.registry import SearchParam

TABLE = "search_number"
MODIFIERS = frozenset({"missing"})
ONE_ROW_PER_VALUE = True
NUMBERS = frozenset({"decimal", "integer", "positiveInt", "unsignedInt"})


@dataclass(frozen=True)
class NumberValue:
    prefix: str
    value: Decimal
    low: Decimal
    high: Decimal
    system: str | None = None
    code: str | None = None  # quantity: code, or unit when no system was given
    by_unit: bool = False


def parse_number(raw: str, name: str, quantity: bool) -> NumberValue:
    prefix, text = prefixed(raw)
    pieces = [unescape(p) for p in split_unescaped(text, "|")]
    if (not quantity and len(pieces) > 1) or len(pieces) not in (1, 3):
        raise Invalid(
            f"Search parameter '{name}': '{raw}' is not a "
            f"{'quantity (value|system|code)' if quantity else 'number'}",
            expression=(name,),
        )
    number = decimal_range(pieces[0])
    if number is None:
        raise Invalid(
            f"Search parameter '{name}': '{pieces[0]}' is not a number", expression=(name,)
        )
    if len(pieces) == 3:
        system, code = pieces[1] or None, pieces[2] or None
        return NumberValue(prefix, *number, system=system, code=code, by_unit=system is None)
    return NumberValue(prefix, *number)


def parse(param: SearchParam | None, modifier: str | None, raw: str, name: str) -> NumberValue:
    return parse_number(raw, name, quantity=False)


def number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | Decimal):
        return float(value)
    return None


def _typed(value: Any, element_type: str | None) -> float | None:
    # Unknown types (an extension's value[x]) count when the JSON value is a number.
    return number(value) if element_type is None or element_type in NUMBERS else None


def index(
    rows: Rows,
    param: SearchParam,
    value: Any,
    element_type: str | None,
    target: str | None,
    part: int,
) -> None:
    found = _typed(value, element_type)
    if found is not None:
        rows.add(TABLE, param=param.code, value=found)


def component(value: Any, element_type: str | None) -> list[dict[str, Any]]:
    found = _typed(value, element_type)
    return [{"c2_value": found}] if found is not None else []


def sort_column(descending: bool) -> str:
    return "value"


def row_order(descending: bool) -> tuple[str, ...]:
    return ("value",)
