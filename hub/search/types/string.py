"""string: starts-with, case- and accent-insensitive; `:exact`, `:contains`.

https://hl7.org/fhir/R4/search.html#string. HumanName and Address are
searched across their parts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hub.search.types.base import MAX_STRING, Rows, non_empty
from hub.search.values import normalise, unescape

if TYPE_CHECKING:
    from hub.search.registry import SearchParam

TABLE = "search_string"
MODIFIERS = frozenset({"exact", "contains", "missing"})
ONE_ROW_PER_VALUE = False
NAME_PARTS = ("family", "given", "prefix", "suffix", "text")
ADDRESS_PARTS = ("line", "city", "district", "state", "postalCode", "country", "text")
_PARTS = {"HumanName": NAME_PARTS, "Address": ADDRESS_PARTS}


def parse(param: SearchParam | None, modifier: str | None, raw: str, name: str) -> str:
    return unescape(non_empty(raw, name))


def _parts(value: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for key in keys:
        item = value.get(key)
        if isinstance(item, list):
            out.extend(i for i in item if isinstance(i, str))
        elif isinstance(item, str):
            out.append(item)
    return out


def strings(value: Any, element_type: str | None) -> list[str]:
    """The texts a value is searched by."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, dict):
        return []
    keys = _PARTS.get(element_type or "")
    if keys is None:
        # Another complex type (a CodeableConcept, an Annotation), or one of unknown type: its
        # parts by their shape (a HumanName has name parts), else its text.
        is_name = any(k in value for k in ("family", "given", "prefix", "suffix"))
        keys = NAME_PARTS if is_name else ADDRESS_PARTS
    out = _parts(value, keys)
    if not out and isinstance(value.get("text"), str):
        out.append(value["text"])
    return out


def add_text(rows: Rows, code: str, text: str) -> None:
    rows.add(TABLE, param=code, value=normalise(text)[:MAX_STRING], exact=text[:MAX_STRING])


def index(
    rows: Rows,
    param: SearchParam,
    value: Any,
    element_type: str | None,
    target: str | None,
    part: int,
) -> None:
    for text in strings(value, element_type):
        add_text(rows, param.code, text)


def component(value: Any, element_type: str | None) -> list[dict[str, Any]]:
    return [{"c2_text": normalise(t)[:MAX_STRING]} for t in strings(value, element_type)]


def sort_column(descending: bool) -> str:
    return "value"


def row_order(descending: bool) -> tuple[str, ...]:
    return ("value", "exact")
