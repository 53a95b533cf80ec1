"""Running a parsed search against the store: a page of matches, their includes, a total.

Pages are cut by keyset: the `_cursor` of a `next` (or `previous`) link holds
the sort values of the last (first) row shown, and the next page starts
strictly after (before) it. Rows written or deleted meanwhile never make a
page repeat or skip a row that was already in place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, or_, select, text

from hub.search.parse import Include, SearchRequest
from hub.search.registry import Registry
from hub.store.repository import Transaction, Version
from hub.store.schema import resources, search_reference
from hub.store.search.query import QueryBuilder, cursor_value, from_cursor, keyset, order

MAX_INCLUDE_ROUNDS = 4


@dataclass(frozen=True)
class Compartment:
    """The scope of a compartment search: `Patient/123/...` is Compartment('Patient', '123')."""

    name: str
    owner: str


@dataclass
class Page:
    matches: list[Version] = field(default_factory=list)
    included: list[Version] = field(default_factory=list)
    total: int | None = None
    next_cursor: dict[str, Any] | None = None
    previous_cursor: dict[str, Any] | None = None


class SearchEngine:
    def __init__(self, registry: Registry, base_url: str) -> None:
        self.registry = registry
        self.builder = QueryBuilder(base_url, registry)

    def in_compartment(
        self, compartment: Compartment, resource_type: str
    ) -> ColumnElement[bool] | None:
        """The condition putting a `resource_type` resource in `compartment`."""
        r = search_reference
        codes = self.registry.compartment(compartment.name, resource_type)
        alternatives: list[ColumnElement[bool]] = []
        if codes:
            alternatives.append(
                resources.c.res_id.in_(
                    select(r.c.res_id).where(
                        r.c.res_type == resource_type,
                        r.c.param.in_(codes),
                        r.c.target_type == compartment.name,
                        r.c.target_id == compartment.owner,
                    )
                )
            )
        if resource_type == compartment.name:
            alternatives.append(resources.c.res_id == compartment.owner)
        return or_(*alternatives) if alternatives else None

    def _scoped(
        self, types: Sequence[str], compartment: Compartment | None
    ) -> Mapping[str, Sequence[ColumnElement[bool]]]:
        """The conditions each type adds to the criteria (its compartment's)."""
        if compartment is None:
            return {}
        extra: dict[str, Sequence[ColumnElement[bool]]] = {}
        for t in types:
            clause = self.in_compartment(compartment, t)
            if clause is not None:
                extra[t] = [clause]
        return extra

    def run(
        self,
        tx: Transaction,
        request: SearchRequest,
        count: int,
        compartment: Compartment | None = None,
        total_default: str = "accurate",
        total_up_to: int | None = None,
    ) -> Page:
        """One page of `request`, within `compartment` when one is given.

        Unless the request asks for a total (`_total`, `_summary=count`, `_count=0`), the
        first page's total is the page's size when it holds every match, else counted up to
        `total_up_to` matches and left out beyond: counting every match of a broad search
        costs more than finding its first page.
        """
        types = list(request.resource_types)
        extra = self._scoped(types, compartment)
        page = Page()
        total_mode = request.total or total_default
        asked = request.total is not None or request.summary == "count" or count == 0
        if request.summary == "count" or (count == 0 and request.total is None):
            total_mode = "accurate"
        wants_total = total_mode != "none" and (request.cursor is None or request.total is not None)
        up_to = None if asked or total_mode != "accurate" else total_up_to

        def total() -> int | None:
            counted = sum(
                self._count(tx, t, request, extra.get(t, ()), total_mode, up_to) for t in types
            )
            return None if up_to is not None and counted > up_to else counted

        if count == 0 or request.summary == "count":
            page.total = total() if wants_total else None
            return page
        cursor = request.cursor or {}
        backward = cursor.get("d") == "b"
        start_type = cursor.get("rt")
        ordered = sorted(types, reverse=backward)
        if start_type in ordered:
            ordered = ordered[ordered.index(start_type) :]
        rows: list[tuple[str, str, list[Any]]] = []
        first_cursor = True
        for resource_type in ordered:
            clauses = self.builder.where(resource_type, request, extra.get(resource_type, ()))
            last = None
            if first_cursor and cursor and cursor.get("rt", resource_type) == resource_type:
                last = [from_cursor(v) for v in cursor["k"]]
            first_cursor = False
            parts = self.builder.segments(
                resource_type, request.sort, self.builder.sort_pair(resource_type, request)
            )
            for part in reversed(parts) if backward else parts:
                own = clauses
                if part.imposes is not None:  # one criterion is the segment's own condition
                    own = self.builder.where(
                        resource_type, request, extra.get(resource_type, ()), part.imposes
                    )
                where = [*own, *part.where]
                if last is not None and part.flag is not None and last[0] != part.flag:
                    if (last[0] > part.flag) != backward:
                        continue  # the cursor's row lies beyond this whole part
                elif last is not None:
                    where.append(keyset(part.keys, part.own(last), backward))
                stmt = (
                    select(resources.c.res_id, *[k for k, _ in part.keys])
                    .where(*where)
                    .order_by(*order(part.keys, backward))
                    .limit(count + 1 - len(rows))
                )
                for row in tx.rows(stmt):
                    rows.append((resource_type, row[0], part.cursor(list(row[1:]))))
                if len(rows) > count:
                    break
            if len(rows) > count:
                break
        more = len(rows) > count
        rows = rows[:count]
        if backward:
            rows.reverse()
        page.matches = tx.load([(t, i) for t, i, _ in rows])
        if rows:
            head, tail = rows[0], rows[-1]
            after = {"d": "f", "rt": tail[0], "k": [cursor_value(v) for v in tail[2]]}
            before = {"d": "b", "rt": head[0], "k": [cursor_value(v) for v in head[2]]}
            if backward:
                page.next_cursor = after if cursor else None
                page.previous_cursor = before if more else None
            else:
                page.next_cursor = after if more else None
                page.previous_cursor = before if cursor else None
        page.included = self._includes(tx, request, page.matches)
        if wants_total:
            whole = request.cursor is None and page.next_cursor is None
            # A first page with no next one holds every match: nothing to count.
            page.total = len(page.matches) if whole and total_mode == "accurate" else total()
        return page

    def _count(
        self,
        tx: Transaction,
        resource_type: str,
        request: SearchRequest,
        extra: Sequence[ColumnElement[bool]],
        mode: str,
        up_to: int | None = None,
    ) -> int:
        """The number of matches; with `up_to`, any number above it once it is passed."""
        postgresql = getattr(tx, "dialect", "") == "postgresql"
        if mode == "estimate" and postgresql:
            return self._estimate(tx, resource_type, request, extra)
        # A count stopped by LIMIT leads PostgreSQL to plans that find the first rows fast,
        # which date and code conditions make slower than the full count (scanning in id
        # order and filtering): a search the planner expects to match more than `up_to` is
        # not counted.
        if (
            up_to is not None
            and postgresql
            and self._estimate(tx, resource_type, request, extra) > up_to
        ):
            return up_to + 1
        return int(tx.rows(self.builder.count(resource_type, request, extra, up_to))[0][0])

    def _estimate(
        self,
        tx: Transaction,
        resource_type: str,
        request: SearchRequest,
        extra: Sequence[ColumnElement[bool]],
    ) -> int:
        """PostgreSQL's estimate of the number of matches, from the plan (nothing is run)."""
        inner = select(resources.c.res_id).where(*self.builder.where(resource_type, request, extra))
        sql = str(inner.compile(compile_kwargs={"literal_binds": True}))
        # text() reads ':name' as a bind parameter: the values written in may hold colons.
        plan = tx.rows(text("EXPLAIN (FORMAT JSON) " + sql.replace(":", "\\:")))
        return int(plan[0][0][0]["Plan"]["Plan Rows"])

    # -- _include and _revinclude ---------------------------------------------------------------

    def _includes(
        self, tx: Transaction, request: SearchRequest, matches: list[Version]
    ) -> list[Version]:
        if not (request.includes or request.revincludes) or not matches:
            return []
        seen = {(v.resource_type, v.resource_id) for v in matches}
        found: list[Version] = []
        frontier = list(matches)
        for round_ in range(MAX_INCLUDE_ROUNDS):
            keys: list[tuple[str, str]] = []
            for inc in request.includes:
                if round_ == 0 or inc.iterate:
                    keys += self._linked(tx, inc, frontier, reverse=False)
            for inc in request.revincludes:
                if round_ == 0 or inc.iterate:
                    keys += self._linked(tx, inc, frontier, reverse=True)
            fresh = list(dict.fromkeys(k for k in keys if k not in seen))
            if not fresh:
                break
            seen.update(fresh)
            frontier = tx.load(fresh)
            found.extend(frontier)
        return found

    def _linked(
        self, tx: Transaction, inc: Include, versions: list[Version], *, reverse: bool
    ) -> list[tuple[str, str]]:
        """What `versions` reference (`_include`), or what references them (`_revinclude`)."""
        r = search_reference
        # "near" is the side of `versions`, "far" the side that is answered.
        near_type, near_id, far_type, far_id = (
            (r.c.target_type, r.c.target_id, r.c.res_type, r.c.res_id)
            if reverse
            else (r.c.res_type, r.c.res_id, r.c.target_type, r.c.target_id)
        )
        near, far = (inc.target, inc.source) if reverse else (inc.source, inc.target)
        by_type: dict[str, list[str]] = {}
        for v in versions:
            if near in (None, "*", v.resource_type):
                by_type.setdefault(v.resource_type, []).append(v.resource_id)
        keys: list[tuple[str, str]] = []
        for resource_type, ids in by_type.items():
            conds = [near_type == resource_type, near_id.in_(ids), far_type.is_not(None)]
            if far not in (None, "*"):
                conds.append(far_type == far)
            if inc.param is not None:
                conds.append(r.c.param == inc.param.code)
            keys += [
                (str(row[0]), str(row[1]))
                for row in tx.rows(select(far_type, far_id).where(*conds))
            ]
        return keys
