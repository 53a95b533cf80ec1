"""Building SQL from a parsed search: one clause per criterion, then order and page.

Every criterion becomes `resources.res_id IN (ids of matching index rows)`;
chains, `_has`, `:missing` and `:not` compose the same sub-selects. Values
are always bound parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    case,
    exists,
    false,
    func,
    or_,
    select,
)

from hub.search.parse import Criterion, SearchRequest, SortKey
from hub.search.registry import Registry, SearchParam
from hub.search.types import TYPES as SEARCH_TYPES
from hub.store.schema import resources, search_composite, search_reference, search_token
from hub.store.search.sql import any_of
from hub.store.search.types import TYPES
from hub.store.search.types import date as date_conditions
from hub.store.search.types import special as special_conditions
from hub.store.search.types import token as token_conditions


@dataclass(frozen=True)
class Segment:
    """A part of a sorted search, run as its own statement, in sort order.

    A sort led by a search parameter has two: the resources with a value (`flag` 0), read
    in order from that parameter's index rows, then those without (`flag` 1). Other sorts
    have one (`flag` None). Cursor values keep one layout whatever the part: the flag, the
    value, then the other keys.
    """

    flag: int | None
    keys: list[tuple[ColumnElement[Any], bool]]
    where: list[ColumnElement[bool]] = field(default_factory=list)
    # A criterion of the search that `where` imposes already: left out of the statement, as
    # PostgreSQL otherwise counts it twice and expects too few rows to read in order.
    imposes: Criterion | None = None

    def own(self, last: Sequence[Any]) -> list[Any]:
        """This part's keys' values in a cursor's values."""
        return list(last) if self.flag is None else list(last[1 + self.flag :])

    def cursor(self, values: Sequence[Any]) -> list[Any]:
        """A cursor's values from this part's keys' values."""
        return list(values) if self.flag is None else [self.flag, *([None] * self.flag), *values]


def _one_row_each(param: SearchParam) -> bool:
    """Whether a resource has at most one index row for `param`: one value, and a type
    indexed with one row per value (a string's HumanName has a row per part)."""
    return param.single and SEARCH_TYPES[param.type].ONE_ROW_PER_VALUE


def _plain(c: Criterion) -> bool:
    """A criterion on the searched type's own values: no modifier, chain or `_has`."""
    return c.param is not None and c.modifier is None and not c.chain and not c.has


def _one_row(c: Criterion) -> bool:
    """Whether `c` is met by one index row of its own (see `QueryBuilder.groups`)."""
    return _plain(c) and c.param is not None and _one_row_each(c.param)


def _selects_live(group: Sequence[Criterion] | Paired) -> bool:
    """Whether the ids `matching` gives for a group are all of live resources of the searched
    type.

    Index rows exist for live resources only (a write replaces them, a delete removes them).
    Not so for `_id`, which reads `resources` whatever their state, nor `_has`, whose ids are
    what references point to.
    """
    if isinstance(group, Paired):
        return True
    return all(c.param is not None and not c.has for c in group)


@dataclass(frozen=True)
class Paired:
    """A token criterion and date criteria that one row of a composite of the two meets (see
    `Registry.paired`): `code=x&date=ge2024` is one range of one index."""

    composite: SearchParam
    token: Criterion
    dates: tuple[Criterion, ...]


Group = Sequence[Criterion] | Paired


def _pairable(c: Criterion) -> bool:
    """A token criterion a composite row can stand for: `system|code` values only, so that
    one coding gives one row (a bare code could match two codings of one resource)."""
    return (
        _plain(c)
        and c.param is not None
        and c.param.type == "token"
        and all(isinstance(v, tuple) and v[0] and v[1] is not None for v in c.values)
    )


class QueryBuilder:
    def __init__(self, base_url: str, registry: Registry | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.registry = registry

    # -- values of one parameter on one resource type ------------------------------------------

    def _value_clause(
        self, param: SearchParam, modifier: str | None, value: Any
    ) -> tuple[Any, ColumnElement[bool]]:
        """(index table, the row condition) for one value."""
        return TYPES[param.type].clause(param, modifier, value, self.base_url)

    def _ids(self, resource_type: str, c: Criterion) -> Select[Any]:
        """ids of `resource_type` resources matching the final parameter of `c`."""
        if c.param is None:  # _id
            return special_conditions.ids(resource_type, c.values)
        if c.modifier == "missing":
            t = TYPES[c.param.type].TABLE
            having = select(t.c.res_id).where(
                t.c.res_type == resource_type, t.c.param == c.param.code
            )
            live = resources.c.res_type == resource_type
            if c.values[0]:
                return select(resources.c.res_id).where(
                    live, resources.c.deleted.is_(False), resources.c.res_id.not_in(having)
                )
            return having
        if c.modifier == "not":
            t = search_token
            positive = select(t.c.res_id).where(
                t.c.res_type == resource_type,
                t.c.param == c.param.code,
                any_of([token_conditions.match(t.c.system, t.c.code, v) for v in c.values]),
            )
            return select(resources.c.res_id).where(
                resources.c.res_type == resource_type,
                resources.c.deleted.is_(False),
                resources.c.res_id.not_in(positive),
            )
        table = None
        alternatives = []
        for value in c.values:
            table, cond = self._value_clause(c.param, c.modifier, value)
            alternatives.append(cond)
        assert table is not None
        return select(table.c.res_id).where(table.c.res_type == resource_type, any_of(alternatives))

    def matching(self, resource_type: str, group: Group) -> Select[Any]:
        """ids of `resource_type` resources meeting a group of criteria (see `groups`)."""
        if isinstance(group, Paired):
            t = search_composite
            conds = [
                any_of(
                    [
                        token_conditions.match(t.c.c1_system, t.c.c1_code, v)
                        for v in group.token.values
                    ]
                )
            ]
            for c in group.dates:
                conds.append(
                    any_of([date_conditions.match(t.c.c2_low, t.c.c2_high, v) for v in c.values])
                )
            return select(t.c.res_id).where(
                t.c.res_type == resource_type, t.c.param == group.composite.code, *conds
            )
        if len(group) > 1:
            table, conds = None, []
            for c in group:
                assert c.param is not None
                alternatives = []
                for value in c.values:
                    table, cond = self._value_clause(c.param, c.modifier, value)
                    alternatives.append(cond)
                conds.append(any_of(alternatives))
            assert table is not None
            return select(table.c.res_id).where(table.c.res_type == resource_type, *conds)
        c = group[0]
        r = search_reference
        # The type the chain starts from: the searched type, or the innermost _has source.
        origin = c.has[-1][0] if c.has else resource_type
        # The final parameter, on each type it is evaluated on...
        per_type = {t: self._ids(t, c) for t in c.resource_types}
        # ...then back along the chain: ids of the resources referencing those.
        for i in reversed(range(len(c.chain))):
            link, types = c.chain[i]
            sources = (origin,) if i == 0 else c.chain[i - 1][1]
            per_type = {
                s: select(r.c.res_id).where(
                    r.c.res_type == s,
                    r.c.param == link.code,
                    any_of(
                        [
                            and_(r.c.target_type == t, r.c.target_id.in_(per_type[t]))
                            for t in types
                            if t in per_type
                        ]
                    ),
                )
                for s in sources
            }
        ids = per_type[origin]
        # _has: from the innermost source out to the searched type.
        for j in reversed(range(len(c.has))):
            source, ref = c.has[j]
            target = resource_type if j == 0 else c.has[j - 1][0]
            ids = select(r.c.target_id).where(
                r.c.res_type == source,
                r.c.param == ref.code,
                r.c.target_type == target,
                r.c.res_id.in_(ids),
            )
        return ids

    # -- the whole search -----------------------------------------------------------------------

    def where(
        self,
        resource_type: str,
        request: SearchRequest,
        extra: Sequence[ColumnElement[bool]] = (),
        imposed: Criterion | None = None,
    ) -> list[ColumnElement[bool]]:
        clauses: list[ColumnElement[bool]] = [
            resources.c.res_type == resource_type,
            resources.c.deleted.is_(False),
            *extra,
        ]
        for group in self.groups(resource_type, request):
            if isinstance(group, list) and len(group) == 1 and group[0] is imposed:
                continue
            clauses.append(resources.c.res_id.in_(self.matching(resource_type, group)))
        return clauses

    def groups(self, resource_type: str, request: SearchRequest, pair: bool = False) -> list[Group]:
        """The criteria on `resource_type`, those that one index row must meet together grouped.

        A resource matches criteria repeating a parameter (`date=ge2024&date=lt2025`) when
        each is met by one of its values, not necessarily the same. When the parameter has
        at most one value per resource, that is one index row meeting all of them: a range
        an index can answer, where separate criteria intersect two halves of the table.
        """
        out: list[list[Criterion]] = []
        by_code: dict[str, list[Criterion]] = {}
        for c in request.criteria:
            if c.root != resource_type:
                continue
            if _one_row(c):
                assert c.param is not None
                if c.param.code in by_code:
                    by_code[c.param.code].append(c)
                    continue
                by_code[c.param.code] = [c]
                out.append(by_code[c.param.code])
            else:
                out.append([c])
        return self._pair(resource_type, out) if pair else list(out)

    def _pair(self, resource_type: str, groups: list[list[Criterion]]) -> list[Group]:
        """A token criterion and the criteria on a one-valued date, as one `Paired` group
        when a composite of the two exists."""
        if self.registry is None:
            return list(groups)
        out: list[Group] = list(groups)
        for dates in groups:
            if not dates or dates[0].param is None or dates[0].param.type != "date":
                continue
            if not all(_one_row(c) for c in dates):
                continue
            for i, group in enumerate(out):
                token = group[0] if isinstance(group, list) and len(group) == 1 else None
                if token is None or not _pairable(token):
                    continue
                assert token.param is not None and dates[0].param is not None
                composite = self.registry.paired(
                    resource_type, token.param.code, dates[0].param.code
                )
                if composite is not None:
                    out[i] = Paired(composite, token, tuple(dates))
                    out = [g for g in out if g is not dates]
                    break
        return out

    def _sort_param(self, resource_type: str, key: SortKey | None) -> SearchParam | None:
        """The sort key's parameter as `resource_type` defines it: a search over several types
        names one code, whose definition (one value or several) differs from type to type."""
        if key is None or key.param is None:
            return None
        found = self.registry.get(resource_type, key.code) if self.registry else None
        return found or key.param

    def sort_pair(
        self, resource_type: str, request: SearchRequest
    ) -> tuple[SearchParam, Criterion] | None:
        """For a sort led by a one-valued date: a token criterion of the search and the
        composite of the two, whose rows give the matches in date order."""
        first = request.sort[0] if request.sort else None
        param = self._sort_param(resource_type, first)
        if self.registry is None or param is None:
            return None
        if not _one_row_each(param) or param.type != "date":
            return None
        for c in request.criteria:
            # One value: a resource has one row of it (two codes OR-ed could give two rows).
            if c.root == resource_type and _pairable(c) and len(c.values) == 1:
                assert c.param is not None
                composite = self.registry.paired(resource_type, c.param.code, param.code)
                if composite is not None:
                    return composite, c
        return None

    def count(
        self,
        resource_type: str,
        request: SearchRequest,
        extra: Sequence[ColumnElement[bool]] = (),
        up_to: int | None = None,
    ) -> Select[Any]:
        """The number of matches; with `up_to`, counting stops past it (at `up_to` + 1).

        Here a token and a date criterion are one range of their composite (`_pair`): a
        count reads every match. A page of matches in id order is found sooner by walking
        both criteria's id-ordered indexes together (`where`), which stops at the page's end.
        """
        groups = self.groups(resource_type, request, pair=True)
        matched: Select[Any]
        if groups and not extra and all(_selects_live(g) for g in groups):
            # Index rows belong to live resources only: the ids the criteria select are the
            # matches, counted from the indexes without reading `resources` (wide: its JSON).
            first, *others = [self.matching(resource_type, g) for g in groups]
            ids = first.subquery().c[0]
            matched = select(ids).where(*[ids.in_(o) for o in others]).distinct()
        else:
            matched = select(resources.c.res_id).where(*self.where(resource_type, request, extra))
        if up_to is not None:
            matched = matched.limit(up_to + 1)
        return select(func.count()).select_from(matched.subquery())

    def sort_keys(
        self, resource_type: str, keys: Sequence[SortKey]
    ) -> list[tuple[ColumnElement[Any], bool]]:
        """(expression, descending) pairs ending with the id, which makes the order total."""
        out: list[tuple[ColumnElement[Any], bool]] = []
        for key in keys:
            if key.code == "_id":
                break  # ids are unique: the keys after it cannot change the order
            if key.code == "_lastUpdated":
                out.append((resources.c.last_updated, key.descending))
                continue
            assert key.param is not None
            t = TYPES[key.param.type].TABLE
            name = SEARCH_TYPES[key.param.type].sort_column(key.descending)
            assert name is not None  # the parser refuses to sort by the others
            column = t.c[name]
            aggregate = func.max(column) if key.descending else func.min(column)
            value = (
                select(aggregate)
                .where(
                    t.c.res_type == resource_type,
                    t.c.res_id == resources.c.res_id,
                    t.c.param == key.param.code,
                )
                .scalar_subquery()
            )
            # Resources without a value come last, whichever the direction.
            out.append((case((value.is_(None), 1), else_=0), False))
            out.append((value, key.descending))
        descending_id = next((k.descending for k in keys if k.code == "_id"), False)
        out.append((resources.c.res_id, descending_id))
        return out

    def segments(
        self,
        resource_type: str,
        keys: Sequence[SortKey],
        pair: tuple[SearchParam, Criterion] | None = None,
    ) -> list[Segment]:
        """The parts of a sort (see `Segment`), in ascending order.

        `sort_keys` orders by a correlated max()/min() of the parameter, which PostgreSQL
        computes for every match before the first row comes out: 550,000 probes for
        `Observation?_sort=-date` at 1M resources. Here the page is read from the
        parameter's index in order instead, one row per resource: its greatest (descending)
        or least (ascending) value, as `sort_keys` orders by.
        """
        first = keys[0] if keys else None
        param = self._sort_param(resource_type, first)
        in_order = (
            SEARCH_TYPES[param.type].row_order(first.descending)
            if first is not None and param is not None
            else None
        )
        if first is None or param is None or in_order is None:
            return [Segment(None, self.sort_keys(resource_type, keys))]
        code, rest = param.code, self.sort_keys(resource_type, keys[1:])
        table = TYPES[param.type].TABLE
        anyone = table.alias()
        has_value = exists().where(
            anyone.c.res_type == resource_type,
            anyone.c.res_id == resources.c.res_id,
            anyone.c.param == code,
        )
        if pair is not None:  # the rows of a composite of the date and a token criterion
            composite, token = pair
            row = search_composite.alias()
            columns: tuple[str, ...] = (
                ("c2_high", "c2_low") if first.descending else ("c2_low", "c2_high")
            )
            valued = [
                row.c.res_type == resource_type,
                row.c.res_id == resources.c.res_id,
                row.c.param == composite.code,
                token_conditions.match(row.c.c1_system, row.c.c1_code, token.values[0]),
                row.c[columns[0]].is_not(None),  # as the partial index says
            ]
            return [
                Segment(0, [(row.c[columns[0]], first.descending), *rest], valued, token),
                Segment(1, rest, [~has_value]),
            ]
        row, other = table.alias(), table.alias()
        columns = in_order
        valued = [
            row.c.res_type == resource_type,
            row.c.res_id == resources.c.res_id,
            row.c.param == code,
        ]
        if not _one_row_each(param):  # several rows: the resource's is its best one
            ahead = [
                and_(
                    *[other.c[n] == row.c[n] for n in columns[:i]],
                    other.c[c] > row.c[c] if first.descending else other.c[c] < row.c[c],
                )
                for i, c in enumerate(columns)
            ]
            better = exists().where(
                other.c.res_type == row.c.res_type,
                other.c.res_id == row.c.res_id,
                other.c.param == row.c.param,
                or_(*ahead),
            )
            valued.append(~better)
        return [
            Segment(0, [(row.c[columns[0]], first.descending), *rest], valued),
            Segment(1, rest, [~has_value]),
        ]


def keyset(
    keys: Sequence[tuple[ColumnElement[Any], bool]], last: Sequence[Any], backward: bool
) -> ColumnElement[bool]:
    """Rows strictly after `last` in the order of `keys` (before it when `backward`)."""
    alternatives = []
    for i, (expr, descending) in enumerate(keys):
        value = last[i]
        earlier = [
            keys[j][0].is_(None) if last[j] is None else keys[j][0] == last[j] for j in range(i)
        ]
        forward = descending == backward
        if value is None:
            # Nothing is after NULL among values (NULLs are grouped by their flag key).
            continue
        step = expr > value if forward else expr < value
        alternatives.append(and_(*earlier, step))
    if not alternatives:
        return false()
    first, descending = keys[0]
    if last[0] is None:
        return or_(*alternatives)
    # Implied by the alternatives, but a bound an index on the first key can start from:
    # a later page then reads what the first one does, not every row before it.
    bound = first >= last[0] if descending == backward else first <= last[0]
    return and_(bound, or_(*alternatives))


def order(keys: Sequence[tuple[ColumnElement[Any], bool]], backward: bool) -> list[Any]:
    return [e.desc() if d != backward else e.asc() for e, d in keys]


def cursor_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"t": value.isoformat()}
    if isinstance(value, Decimal):
        return float(value)
    return value


def from_cursor(value: Any) -> Any:
    if isinstance(value, dict) and "t" in value:
        parsed = datetime.fromisoformat(value["t"])
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return value


__all__ = ["QueryBuilder", "Segment", "cursor_value", "from_cursor", "keyset", "order"]
