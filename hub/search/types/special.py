"""special: parameters the hub answers from the store's own columns, not from an index.

https://hl7.org/fhir/R4/search.html#special. `_id` (a token on the
resource's id) is the one: its condition is on the resources themselves
(`hub.store.search.types.special`). Other parameters of the R4 `special`
type (`near`, `_text`) are not supported, and the registry reports them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hub.search.types.base import Rows, no_rows, unsorted
from hub.search.values import unescape

if TYPE_CHECKING:
    from hub.search.registry import SearchParam

TABLE = "resources"
MODIFIERS: frozenset[str] = frozenset()
ONE_ROW_PER_VALUE = True
# Parameter code -> the type its values are read as.
PARAMETERS = {"_id": "token"}

component = no_rows
sort_column = unsorted  # `_sort=_id` orders by the resources' own column
row_order = unsorted


def parse(param: SearchParam | None, modifier: str | None, raw: str, name: str) -> str:
    return unescape(raw)


def index(
    rows: Rows,
    param: SearchParam,
    value: Any,
    element_type: str | None,
    target: str | None,
    part: int,
) -> None:
    """Nothing to index: the store's columns hold the value."""
