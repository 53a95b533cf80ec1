"""The write executor: verifies a plan of writes and applies it in one transaction.

Every write path ends here (REST interactions, batch and transaction Bundles,
feeds), so each rule is written once, in the function of its write kind:

- versions: If-Match names the version a write replaces (412 otherwise);
  content unchanged makes no version (`hub.interactions.writes`);
- conditions: a conditional create matches under a lock, so that two with the
  same criteria cannot both create; conditional update, patch and delete need
  at most one match (412 on several);
- references (HUB_REFERENTIAL_INTEGRITY): once the whole plan is applied, every
  local literal reference of what it wrote names a live resource (400), and
  nothing live references what it deleted (409). Checked at the end, as the plan
  is one transaction: a Bundle may create a resource and what refers to it in
  any order, or delete both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonpatch
import jsonpointer

from hub.errors import (
    BusinessRule,
    Conflict,
    Gone,
    HubError,
    Invalid,
    Issue,
    MultipleMatches,
    NotFound,
)
from hub.fhir import jsonbytes, validate
from hub.fhir.content import nesting
from hub.fhir.deep import call_at_depth
from hub.fhir.references import Found, local_references
from hub.interactions.context import Context, Result
from hub.interactions.plan import (
    ConditionalCreate,
    ConditionalDelete,
    ConditionalUpdate,
    Create,
    Criteria,
    Delete,
    MissingReference,
    Patch,
    Plan,
    Update,
    Write,
    method_of,
)
from hub.interactions.writes import check_precondition, lock_name, new_id, remove, save
from hub.search.limits import Limits
from hub.search.parse import parse
from hub.store.repository import Transaction, Version
from hub.store.search.engine import SearchEngine

Key = tuple[str, str]  # (type, id)

# Most referring resources a refused delete names.
REFERRERS_NAMED = 5


def execute(ctx: Context, tx: Transaction, plan: Plan) -> list[Result]:
    """Apply `plan`'s writes in order in `tx`; one Result per write, in plan order.

    A failing write raises its `HubError` with `write` set to its index; the caller's
    transaction is then to be rolled back (nothing of the plan is kept).
    """
    run = _Run(ctx, tx, plan.base_url)
    results = []
    for index, write in enumerate(plan.writes):
        try:
            results.append(_APPLY[type(write)](run, index, write))
        except HubError as e:
            if e.write is None:
                e.write = index
            raise
    if ctx.settings.referential_integrity:
        _verify_references(run)
        _verify_deletes(run)
    return results


def unresolved(ctx: Context, tx: Transaction, plan: Plan) -> list[MissingReference]:
    """The local literal references of the plan's resources that would name nothing live
    once it is applied: neither stored and not deleted, nor written by the plan (and not
    deleted by it). One query for all. Patches are not looked into (their result depends on
    the stored version), nor conditional deletes (their target is known only by searching).

    The executor refuses these when HUB_REFERENTIAL_INTEGRITY is on (this answers whatever
    the setting says): a feed asks first, to let a message whose targets have not arrived
    yet wait instead of failing.
    """
    state: dict[Key, bool] = {}  # what the plan leaves live (True) or deleted (False)
    written: dict[Key, tuple[int, Sequence[Found]]] = {}
    pending: list[tuple[int, Sequence[Found]]] = []  # resources whose id is known once matched
    for index, write in enumerate(plan.writes):
        if isinstance(write, Create | ConditionalCreate | Update | ConditionalUpdate):
            found = _references(write, plan.base_url)
            key = _known_key(write)
            if key is None:
                pending.append((index, found))
            else:
                state[key] = True
                written[key] = (index, found)
        elif isinstance(write, Delete):
            state[(write.resource_type, write.resource_id)] = False
        elif isinstance(write, Patch) and write.resource_id is not None:
            state[(write.resource_type, write.resource_id)] = True
    checked = [
        (index, found) for key, (index, found) in written.items() if state.get(key, True)
    ] + pending
    return _missing(tx, sorted(checked, key=lambda c: c[0]), state)


def matches(
    ctx: Context,
    tx: Transaction,
    resource_type: str,
    criteria: Sequence[tuple[str, str]],
    base_url: str = "",
    limit: int = 2,
) -> list[Version]:
    """Resources matching conditional criteria: at most `limit`, two tell one from many."""
    request = parse(ctx.registry, [resource_type], criteria, limits=Limits.of(ctx.settings))
    if not request.criteria:
        raise Invalid("A conditional request needs at least one search criterion")
    request.total = "none"
    request.sort, request.includes, request.revincludes = [], [], []
    with tx.limited(ctx.settings.search_timeout_seconds):
        page = SearchEngine(ctx.registry, base_url).run(tx, request, limit, total_default="none")
    return page.matches


def match(
    ctx: Context,
    tx: Transaction,
    resource_type: str,
    criteria: Sequence[tuple[str, str]],
    base_url: str = "",
    exclude: frozenset[Key] = frozenset(),
) -> Version | None:
    """The one resource conditional criteria match, None when none does; 412 on several.
    `exclude`: resources that do not count (a transaction deletes them first)."""
    found = [
        v
        for v in matches(ctx, tx, resource_type, criteria, base_url, 2 + len(exclude))
        if (v.resource_type, v.resource_id) not in exclude
    ]
    if len(found) > 1:
        raise MultipleMatches(
            f"More than one {resource_type} matches the criteria; the request needs exactly one"
        )
    return found[0] if found else None


def create_match(
    ctx: Context,
    tx: Transaction,
    resource_type: str,
    criteria: Criteria,
    base_url: str = "",
    exclude: frozenset[Key] = frozenset(),
) -> Version | None:
    """The resource an If-None-Exist matches; when none does, `tx` holds the lock that
    keeps two creates with the same criteria from both creating until it ends."""
    key = lock_name(resource_type, criteria)
    search = [(k, v) for k, v in criteria if v]  # a blank criterion is no criterion
    if not tx.try_lock(key):
        # Another request with these criteria is at work, most likely creating the match:
        # once it has committed, the match is found without waiting for the lock.
        found = match(ctx, tx, resource_type, search, base_url, exclude)
        if found is not None:
            return found
        tx.lock(key)  # bounded: Busy (503) when the wait would be too long
    return match(ctx, tx, resource_type, search, base_url, exclude)


# -- one function per write kind -------------------------------------------------------------


@dataclass
class _Run:
    ctx: Context
    tx: Transaction
    base_url: str
    # What the plan stored, by resource (the last write of each), with its references.
    stored: dict[Key, tuple[int, Sequence[Found]]] = field(default_factory=dict)
    # What it deleted, with the index of the write that did.
    deleted: dict[Key, int] = field(default_factory=dict)

    def store(
        self,
        index: int,
        write: Write,
        resource_id: str,
        resource: dict[str, Any],
        *,
        if_match: int | None = None,
        fresh: bool = False,
        references: Sequence[Found] | None = None,
    ) -> Result:
        found: list[Found] = []
        result = save(
            self.ctx,
            self.tx,
            write.resource_type,
            resource_id,
            resource,
            method=method_of(write),
            if_match=if_match,
            fresh=fresh,
            base_url=self.base_url,
            found=found,
            references=references,
        )
        key = (write.resource_type, resource_id)
        self.stored[key] = (index, found)
        self.deleted.pop(key, None)
        return result

    def delete(
        self, index: int, resource_type: str, resource_id: str, if_match: int | None
    ) -> Result:
        result = remove(self.tx, resource_type, resource_id, if_match=if_match)
        key = (resource_type, resource_id)
        self.stored.pop(key, None)
        if "ETag" in result.headers:  # a deletion version was written
            self.deleted[key] = index
        return result

    def match(self, resource_type: str, criteria: Criteria) -> Version | None:
        return match(self.ctx, self.tx, resource_type, criteria, self.base_url)


def _create(run: _Run, index: int, write: Create) -> Result:
    resource_id = write.id if write.id is not None else new_id()
    return run.store(
        index, write, resource_id, write.resource, fresh=True, references=write.references
    )


def _conditional_create(run: _Run, index: int, write: ConditionalCreate) -> Result:
    existing = create_match(run.ctx, run.tx, write.resource_type, write.criteria, run.base_url)
    if existing is not None:
        return Result(200, version=existing)
    resource_id = write.id if write.id is not None else new_id()
    return run.store(
        index, write, resource_id, write.resource, fresh=True, references=write.references
    )


def _update(run: _Run, index: int, write: Update) -> Result:
    return run.store(
        index,
        write,
        write.resource_id,
        write.resource,
        if_match=write.if_match,
        references=write.references,
    )


def _conditional_update(run: _Run, index: int, write: ConditionalUpdate) -> Result:
    found = run.match(write.resource_type, write.criteria)
    body_id = write.resource.get("id")
    if found is None:
        target = body_id if isinstance(body_id, str) and body_id else new_id()
    else:
        target = found.resource_id
        if body_id is not None and body_id != target:
            raise Invalid(
                f"The resource's id '{body_id}' differs from the id '{target}' of the "
                "resource matching the criteria",
                expression=(f"{write.resource_type}.id",),
            )
    return run.store(
        index, write, target, write.resource, if_match=write.if_match, references=write.references
    )


def _patch(run: _Run, index: int, write: Patch) -> Result:
    resource_type = write.resource_type
    if write.resource_id is None:
        found = run.match(resource_type, write.criteria)
        if found is None:
            raise NotFound(f"No {resource_type} matches the criteria")
        target = found.resource_id
    else:
        target = write.resource_id
    current = run.tx.current(resource_type, target)
    if current is None:
        raise NotFound(f"{resource_type}/{target} is not known")
    if current.deleted:
        raise Gone(f"{resource_type}/{target} was deleted")
    check_precondition(current, write.if_match)
    assert current.content is not None
    patched = _patched(run.ctx, jsonbytes.loads(current.content), list(write.operations))
    if patched.get("resourceType") != resource_type or patched.get("id") != target:
        raise BusinessRule("A patch may not change the resource's type or id")
    try:
        validate(patched, max_depth=run.ctx.settings.max_resource_depth)
    except Invalid as e:
        raise BusinessRule(
            f"The patched resource is not valid: {e.message}", issues=e.issues
        ) from None
    return run.store(index, write, target, patched, if_match=write.if_match)


def _patched(ctx: Context, stored: Any, operations: list[dict[str, Any]]) -> dict[str, Any]:
    document = jsonpatch.JsonPatch(operations)
    try:
        # jsonpatch copies the resource and the values recursively, as deep as they nest
        # (the stored resource may predate a lower limit; orjson reads 1024 levels at most).
        depth = max(nesting(operations, ctx.settings.max_resource_depth + 1), nesting(stored, 1024))
        patched = call_at_depth(depth, lambda: document.apply(stored))
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
        raise BusinessRule(f"The patch cannot be applied: {e}") from None
    if not isinstance(patched, dict):
        raise BusinessRule("The patch does not leave a resource")
    return patched


def _delete(run: _Run, index: int, write: Delete) -> Result:
    return run.delete(index, write.resource_type, write.resource_id, write.if_match)


def _conditional_delete(run: _Run, index: int, write: ConditionalDelete) -> Result:
    # Several matches answer 412: deleting many at once is refused, not guessed at.
    found = run.match(write.resource_type, write.criteria)
    if found is None:
        return Result(204)
    return run.delete(index, write.resource_type, found.resource_id, write.if_match)


_APPLY: dict[type[Any], Callable[[_Run, int, Any], Result]] = {
    Create: _create,
    ConditionalCreate: _conditional_create,
    Update: _update,
    ConditionalUpdate: _conditional_update,
    Patch: _patch,
    Delete: _delete,
    ConditionalDelete: _conditional_delete,
}


# -- referential integrity -------------------------------------------------------------------


def _known_key(write: Create | ConditionalCreate | Update | ConditionalUpdate) -> Key | None:
    if isinstance(write, Update):
        return (write.resource_type, write.resource_id)
    if isinstance(write, Create | ConditionalCreate) and write.id is not None:
        return (write.resource_type, write.id)
    return None


def _references(
    write: Create | ConditionalCreate | Update | ConditionalUpdate, base_url: str
) -> Sequence[Found]:
    """The write's local references: those it carries, else its resource walked."""
    if write.references is not None:
        return write.references
    return local_references(write.resource, base_url)


def _missing(
    tx: Transaction, checked: Sequence[tuple[int, Sequence[Found]]], state: dict[Key, bool]
) -> list[MissingReference]:
    """The references of `checked` naming nothing live: `state` says what the plan leaves
    live or deleted, the store answers the rest in one query."""
    asked = [t for _, found in checked for _, _, t in found if t not in state]
    live = tx.live(list(dict.fromkeys(asked))) if asked else set()
    return [
        MissingReference(index, path, reference)
        for index, found in checked
        for path, reference, target in found
        if not state.get(target, target in live)
    ]


def _verify_references(run: _Run) -> None:
    # Everything the plan wrote is in the store now: it answers for all of it.
    checked = sorted(run.stored.values(), key=lambda s: s[0])
    missing = _missing(run.tx, checked, {})
    if not missing:
        return
    first = missing[0].write
    mine = [m for m in missing if m.write == first]
    issues = [
        Issue(
            "not-found",
            f"{m.path}: '{m.reference}' names no resource of this server "
            "(it does not exist, or was deleted)",
            expression=(m.path,),
        )
        for m in mine
    ]
    error = Invalid(issues[0].diagnostics, issues=issues)
    error.write = first
    raise error


def _verify_deletes(run: _Run) -> None:
    if not run.deleted:
        return
    found = run.tx.referrers(list(run.deleted), REFERRERS_NAMED)
    if not found:
        return
    target = (found[0][2], found[0][3])
    names = [f"{t}/{i}" for t, i, tt, ti in found if (tt, ti) == target]
    more = " (and maybe more)" if len(found) == REFERRERS_NAMED else ""
    error = Conflict(
        f"{target[0]}/{target[1]} cannot be deleted: {', '.join(names)}{more} still "
        "reference it; delete or change those first"
    )
    error.write = run.deleted[target]
    raise error
