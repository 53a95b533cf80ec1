"""What every search parameter type implements, and the index rows they produce.

A type module (`hub.search.types.string`, `.token`, ...) reads a searched value,
turns a resource's element into index rows, and says how its rows sort. The
SQL condition a searched value becomes is the store's part: each type has its
counterpart in `hub.store.search.types`, behind the same table of types.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from hub.errors import Invalid

if TYPE_CHECKING:
    from hub.search.registry import SearchParam

# Index columns hold MAX_STRING characters (PostgreSQL refuses more): longer ones are cut.
MAX_STRING = 500
# Search index rows of one resource version, by index table name.
IndexRows = dict[str, list[dict[str, Any]]]

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")


class ParamType(Protocol):
    """One FHIR search parameter type (https://hl7.org/fhir/R4/search.html#ptypes)."""

    # The modifiers a parameter of this type accepts (`:missing` included where it applies).
    MODIFIERS: frozenset[str]
    # Whether one value of an element gives one index row (a HumanName gives one per part).
    ONE_ROW_PER_VALUE: bool

    def parse(self, param: SearchParam | None, modifier: str | None, raw: str, name: str) -> Any:
        """One searched value (escaped, with its prefix), checked; `name` is for errors."""

    def index(
        self,
        rows: Rows,
        param: SearchParam,
        value: Any,
        element_type: str | None,
        target: str | None,
        part: int,
    ) -> None:
        """Add the index rows of one value found by the expression's `part`-th part.

        `element_type` is the value's R4 type (`hub.search.paths`), None where it cannot
        be known; `target` the reference type the part keeps."""

    def component(self, value: Any, element_type: str | None) -> list[dict[str, Any]]:
        """The `c2_` columns of a composite row whose second component is of this type."""

    def sort_column(self, descending: bool) -> str | None:
        """The index column whose least (greatest, descending) value orders a resource;
        None: the type cannot be sorted by."""

    def row_order(self, descending: bool) -> tuple[str, ...] | None:
        """Columns that tell a resource's rows apart, the sort value first, when a sorted page
        may be read from the index in order (`hub.store.search.query.Segment`); else None."""


class Rows:
    """The index rows of one resource, by table, each kept once."""

    def __init__(self, resource_type: str, resource_id: str) -> None:
        self.key = {"res_type": resource_type, "res_id": resource_id}
        self.rows: IndexRows = {}
        self.seen: set[tuple[Any, ...]] = set()

    def add(self, table: str, **values: Any) -> None:
        # `values` is this call's own dict: cut and completed in place (every write adds
        # dozens of rows, and a new dict for each step showed in the profile).
        for name, value in values.items():
            if isinstance(value, str) and len(value) > MAX_STRING:
                values[name] = value[:MAX_STRING]
        signature = (table, *values.values())
        if signature not in self.seen:
            self.seen.add(signature)
            values.update(self.key)
            self.rows.setdefault(table, []).append(values)


def prefixed(raw: str) -> tuple[str, str]:
    """(prefix, rest) of an ordered value: `ge2024` is ('ge', '2024'); no prefix is `eq`."""
    if raw[:2] in PREFIXES and len(raw) > 2 and not raw[2].isalpha():
        return raw[:2], raw[2:]
    return "eq", raw


def non_empty(raw: str, name: str) -> str:
    if not raw:
        raise Invalid(f"Search parameter '{name}' has an empty value", expression=(name,))
    return raw


def no_rows(value: Any, element_type: str | None) -> list[dict[str, Any]]:
    return []


def unsorted(descending: bool) -> None:
    return None
