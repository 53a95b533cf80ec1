"""uri: exact, `:below` (a prefix), `:above` (the stored uri is a prefix of the value).

https://hl7.org/fhir/R4/search.html#uri. Indexed from uri, url, canonical
and the other primitives a uri parameter's expression reaches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hub.search.types import token
from hub.search.types.base import MAX_STRING, Rows, non_empty
from hub.search.values import unescape

if TYPE_CHECKING:
    from hub.search.registry import SearchParam

TABLE = "search_uri"
MODIFIERS = frozenset({"below", "above", "missing"})
ONE_ROW_PER_VALUE = True


def parse(param: SearchParam | None, modifier: str | None, raw: str, name: str) -> str:
    return unescape(non_empty(raw, name))


def index(
    rows: Rows,
    param: SearchParam,
    value: Any,
    element_type: str | None,
    target: str | None,
    part: int,
) -> None:
    # A uri is a JSON string whatever its R4 type (uri, url, canonical, oid, uuid): any
    # string element is one.
    if isinstance(value, str):
        rows.add(TABLE, param=param.code, value=value[:MAX_STRING])


def component(value: Any, element_type: str | None) -> list[dict[str, Any]]:
    # Composite rows keep a uri component in the token columns, system empty.
    return token.component(value, element_type)


def sort_column(descending: bool) -> str:
    return "value"


def row_order(descending: bool) -> tuple[str, ...]:
    return ("value",)
