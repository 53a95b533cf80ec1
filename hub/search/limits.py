"""What a search may cost: limits checked while its parameters are read.

A search's SQL grows with its criteria, OR values, chain hops and `_has`
levels: hundreds of criteria kept PostgreSQL planning for minutes, and SQLite
cannot parse a statement nested 8 subqueries deep or an OR of 500 values. So a
request beyond a limit is refused (400 `too-costly`, naming the limit) before
anything runs, on both stores alike; the defaults (`hub.settings`) stay below
what SQLite executes. Identical criteria are one criterion: `name=a&name=a` is
`name=a`, and counts once.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from hub.errors import TooCostly

if TYPE_CHECKING:
    from hub.search.parse import Criterion
    from hub.settings import Settings

T = TypeVar("T", bound=Hashable)


@dataclass(frozen=True)
class Limits:
    criteria: int
    or_values: int
    chain: int
    has_depth: int
    sort: int = 8

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            settings.search_max_criteria,
            settings.search_max_or_values,
            settings.search_max_chain,
            settings.search_max_has_depth,
            settings.search_max_sort,
        )

    def check_chain(self, name: str, hops: int) -> None:
        if hops > self.chain:
            raise TooCostly(
                f"'{name}' chains {hops} references; the hub follows at most {self.chain} "
                "(HUB_SEARCH_MAX_CHAIN)",
                expression=(name,),
            )

    def check_has(self, name: str, depth: int) -> None:
        if depth > self.has_depth:
            raise TooCostly(
                f"'{name}' nests _has more than {self.has_depth} deep, the hub's limit "
                "(HUB_SEARCH_MAX_HAS_DEPTH)",
                expression=(name,),
            )

    def check_or_values(self, name: str, count: int) -> None:
        """`count`: the distinct values of one criterion, or of all so far (each bound
        parameters of the SQL, which SQLite and psycopg take some 32,000 of)."""
        if count > self.or_values:
            raise TooCostly(
                f"The search has more than {self.or_values} different values, the hub's limit "
                f"(HUB_SEARCH_MAX_OR_VALUES), with those of '{name}'",
                expression=(name,),
            )

    def check_sort(self, count: int) -> None:
        if count > self.sort:
            raise TooCostly(
                f"_sort has more than {self.sort} different keys, the hub's limit "
                "(HUB_SEARCH_MAX_SORT)",
                expression=("_sort",),
            )

    def check_criteria(self, name: str, count: int) -> None:
        if count > self.criteria:
            raise TooCostly(
                f"The search has more than {self.criteria} different criteria, the hub's limit "
                f"(HUB_SEARCH_MAX_CRITERIA); '{name}' is one too many",
                expression=(name,),
            )


def distinct(values: Sequence[T]) -> tuple[T, ...]:
    """`values` without repeats, in their order: an OR of a value with itself is that value."""
    return tuple(dict.fromkeys(values))


def identity(c: Criterion) -> tuple[Any, ...]:
    """What makes two criteria the same condition: everything but the order of OR values."""
    return (
        c.root,
        c.resource_types,
        c.param,
        c.code,
        c.modifier,
        c.chain,
        c.has,
        frozenset(c.values),
    )


__all__ = ["Limits", "distinct", "identity"]
