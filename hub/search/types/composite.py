"""composite: `a$b`, two components searched on the same element.

https://hl7.org/fhir/R4/search.html#composite. One row per pair of the first
component's tokens and the second component's values, found on one element
of the base (one `Observation.component`, or the resource itself).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hub.errors import Invalid
from hub.search import types
from hub.search.types import token
from hub.search.types.base import Rows, no_rows, unsorted
from hub.search.values import split_unescaped

if TYPE_CHECKING:
    from hub.search.registry import SearchParam

TABLE = "search_composite"
MODIFIERS: frozenset[str] = frozenset()
ONE_ROW_PER_VALUE = False
# Every composite row names every column: a resource's rows are inserted together, and
# composites of different kinds (a quantity, a date) fill different ones.
_NO_SECOND = dict.fromkeys(("c2_system", "c2_code", "c2_value", "c2_low", "c2_high", "c2_text"))

component = no_rows  # a composite is not a component of another
sort_column = unsorted
row_order = unsorted


def parse(param: SearchParam | None, modifier: str | None, raw: str, name: str) -> Any:
    assert param is not None and len(param.components) == 2
    halves = split_unescaped(raw, "$", maxsplit=1)
    if len(halves) != 2:
        raise Invalid(
            f"Search parameter '{name}': a composite value is 'a$b', not '{raw}'",
            expression=(name,),
        )
    first, second = param.components
    return (
        types.TYPES[first.type].parse(None, None, halves[0], name),
        types.TYPES[second.type].parse(None, None, halves[1], name),
    )


def index(
    rows: Rows,
    param: SearchParam,
    value: Any,
    element_type: str | None,
    target: str | None,
    part: int,
) -> None:
    if not isinstance(value, dict):
        return
    first, second = param.components
    second_type = types.TYPES[second.type]
    heads = [
        pair
        for p in first.per_part[part]
        for v, kind in p.typed(value)
        for pair in token.pairs(v, kind)
    ]
    tails = [
        row
        for p in second.per_part[part]
        for v, kind in p.typed(value)
        for row in second_type.component(v, kind)
    ]
    for system, code in heads:
        for tail in tails:
            rows.add(
                TABLE,
                param=param.code,
                c1_system=system,
                c1_code=code,
                **{**_NO_SECOND, **tail},
            )
