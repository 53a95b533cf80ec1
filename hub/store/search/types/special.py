"""special conditions: `_id`, on the resources' own column."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Select, Table, select

from hub.store.schema import resources
from hub.store.search.types.base import not_a_component

if TYPE_CHECKING:
    from hub.search.registry import SearchParam

TABLE = resources
second = not_a_component


def clause(
    param: SearchParam, modifier: str | None, value: str, base_url: str
) -> tuple[Table, ColumnElement[bool]]:
    return TABLE, TABLE.c.res_id == value


def ids(resource_type: str, values: Sequence[Any]) -> Select[Any]:
    """ids of `resource_type` resources with one of these ids, whatever their state."""
    return select(resources.c.res_id).where(
        resources.c.res_type == resource_type, resources.c.res_id.in_(values)
    )
