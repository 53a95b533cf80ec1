"""SQL pieces every search condition uses: long ORs, LIKE patterns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Boolean, ColumnElement, or_
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal

from hub.search.types.base import MAX_STRING


class _Parenthesised(ColumnElement[bool]):
    """A condition in parentheses of its own, which SQLAlchemy does not flatten into the OR
    around it (see `any_of`)."""

    inherit_cache = True
    type = Boolean()
    _traverse_internals = [  # noqa: RUF012  (SQLAlchemy's cache key and bind parameters)
        ("element", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, element: ColumnElement[bool]) -> None:
        self.element = element


@compiles(_Parenthesised)
def _parenthesised(element: _Parenthesised, compiler: SQLCompiler, **kw: Any) -> str:
    return f"({compiler.process(element.element, **kw)})"


_SPAN = 64


def any_of(conditions: Sequence[ColumnElement[bool]]) -> ColumnElement[bool]:
    """The OR of `conditions`, a long list as an OR of parenthesised ORs of up to 64.

    SQLite parses `a OR b OR c ...` into a tree as deep as the list is long and refuses one
    deeper than 1000 (an OR of some 450 values, fewer inside a chain). Groups keep it shallow,
    and few: each level of parentheses also takes room on SQLite's parser stack, which nested
    subqueries (chains, `_has`) fill. PostgreSQL flattens nested ORs: its plan is the same.
    """
    if len(conditions) <= _SPAN:
        return or_(*conditions)
    return any_of(
        [_Parenthesised(or_(*conditions[i : i + _SPAN])) for i in range(0, len(conditions), _SPAN)]
    )


def like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def starts(column: Any, text: str) -> ColumnElement[bool]:
    return column.like(like_escape(text[:MAX_STRING]) + "%", escape="\\")
