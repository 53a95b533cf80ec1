"""quantity: `[prefix]value|system|code` or `value||unit`.

https://hl7.org/fhir/R4/search.html#quantity. Indexed from Quantity and its
kinds (Age, Duration, ...), Money (its currency as the code) and Range (both
bounds).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hub.search.types.base import Rows
from hub.search.types.number import NumberValue, number, parse_number

if TYPE_CHECKING:
    from hub.search.registry import SearchParam

TABLE = "search_quantity"
MODIFIERS = frozenset({"missing"})
ONE_ROW_PER_VALUE = False
QUANTITIES = frozenset(
    {"Quantity", "SimpleQuantity", "Age", "Count", "Distance", "Duration", "Money", "MoneyQuantity"}
)


def parse(param: SearchParam | None, modifier: str | None, raw: str, name: str) -> NumberValue:
    return parse_number(raw, name, quantity=True)


def quantity(value: Any) -> dict[str, Any] | None:
    if isinstance(value, dict) and number(value.get("value")) is not None:
        return {
            "value": number(value["value"]),
            "system": value.get("system"),
            "code": value.get("code") or value.get("currency"),
            "unit": value.get("unit"),
        }
    return None


def _bounds(value: dict[str, Any]) -> list[dict[str, Any]]:
    found = [quantity(value.get(bound)) for bound in ("low", "high")]
    return [q for q in found if q is not None]


def quantities(value: Any, element_type: str | None) -> list[dict[str, Any]]:
    """The quantities one value holds, by its R4 type."""
    if element_type is None:
        # A value of unknown type (an expression fhirpathpy evaluates, such as an extension's
        # value[x]): a quantity, or a Range, by its keys.
        found = quantity(value)
        if found is not None:
            return [found]
        if isinstance(value, dict) and ("low" in value or "high" in value):
            return _bounds(value)
        return []
    if element_type in QUANTITIES:
        found = quantity(value)
        return [found] if found is not None else []
    if element_type == "Range" and isinstance(value, dict):
        return _bounds(value)
    return []


def index(
    rows: Rows,
    param: SearchParam,
    value: Any,
    element_type: str | None,
    target: str | None,
    part: int,
) -> None:
    for found in quantities(value, element_type):
        rows.add(TABLE, param=param.code, **found)


def component(value: Any, element_type: str | None) -> list[dict[str, Any]]:
    # A composite's second component: a quantity, not a Range's bounds (as the index has it).
    if element_type not in QUANTITIES and element_type is not None:
        return []
    q = quantity(value)
    return [{"c2_value": q["value"], "c2_system": q["system"], "c2_code": q["code"]}] if q else []


def sort_column(descending: bool) -> str:
    return "value"


def row_order(descending: bool) -> None:
    return None
