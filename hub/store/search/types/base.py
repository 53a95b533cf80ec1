"""What every search parameter type implements in SQL (the store's half of a type).

`hub.search.types.<type>` parses a searched value and makes index rows;
`hub.store.search.types.<type>` turns a parsed value into the condition on
that type's index table. `hub.store.search.types.TYPES` is the table from
type name to module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import ColumnElement, Table

if TYPE_CHECKING:
    from hub.search.registry import SearchParam


class Conditions(Protocol):
    # The index table of the type (`resources` for the store's own columns).
    TABLE: Table

    def clause(
        self, param: SearchParam, modifier: str | None, value: Any, base_url: str
    ) -> tuple[Table, ColumnElement[bool]]:
        """(index table, the condition on one of its rows) for one searched value, the
        parameter's code included; `base_url` makes this server's absolute URLs relative."""

    def second(self, table: Any, value: Any) -> ColumnElement[bool]:
        """The condition on a composite row's `c2_` columns, when a composite's second
        component is of this type."""


def not_a_component(table: Any, value: Any) -> ColumnElement[bool]:
    raise TypeError("not a composite's component type")
