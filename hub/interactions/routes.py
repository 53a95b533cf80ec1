"""Which interaction answers which request: the one routing table.

The REST API and the batch/transaction processor both call `dispatch`, which
answers by `ROUTES`; the CapabilityStatement is generated from the same table.
A request the table does not hold is refused: an unknown operation 404, a known
path with another method 405.
"""

from __future__ import annotations

from hub.errors import HubError, Invalid, MethodNotAllowed, NotFound
from hub.fhir import ID_PATTERN, is_resource_type
from hub.fhir.content import escaped
from hub.interactions import (
    capabilities,
    create,
    delete,
    history,
    lineage,
    patch,
    read,
    reindex,
    search,
    transaction,
    update,
    vread,
)
from hub.interactions.context import Context, Request, Result
from hub.interactions.route import COMPARTMENT, Level, Route
from hub.store.repository import Transaction

EVERYTHING = "http://hl7.org/fhir/OperationDefinition/Patient-everything"
# The hub's own operations, named like its own SearchParameters (urn:fhir-hub:...).
LINEAGE = "urn:fhir-hub:OperationDefinition/lineage"
REINDEX = "urn:fhir-hub:OperationDefinition/reindex"


def _metadata(ctx: Context, req: Request, tx: Transaction | None = None) -> Result:
    return capabilities.capabilities(ctx, req, ROUTES)


def _bundle(ctx: Context, req: Request, tx: Transaction | None = None) -> Result:
    if tx is not None:
        raise Invalid("A Bundle entry cannot post another batch or transaction")
    return transaction.process(ctx, req, dispatch)


_READS = ("GET",)
_SEARCHES = ("GET", "POST")

ROUTES: tuple[Route, ...] = (
    # [base]
    Route("system", _READS, "metadata", _metadata),
    Route("system", ("POST",), None, _bundle, code="transaction"),
    Route("system", ("POST",), None, _bundle, code="batch"),
    Route("system", _READS, None, search.system_search, code="search-system"),
    Route("system", ("POST",), "_search", search.system_search, code="search-system"),
    Route("system", _READS, "_history", history.history, code="history-system"),
    Route("system", ("POST",), "$reindex", reindex.start, definition=REINDEX, takes_id=False),
    Route("system", _READS, "$reindex", reindex.job_status, definition=REINDEX),
    # [base]/[type]
    Route("type", ("POST",), None, create.create, code="create"),
    Route("type", _READS, None, search.search, code="search-type"),
    Route("type", ("POST",), "_search", search.search, code="search-type"),
    Route("type", ("PUT",), None, update.update, code="update", needs_criteria=True),
    Route("type", ("PATCH",), None, patch.patch, code="patch", needs_criteria=True),
    Route("type", ("DELETE",), None, delete.delete, code="delete", needs_criteria=True),
    Route("type", _READS, "_history", history.history, code="history-type"),
    # [base]/[type]/[id]
    Route("instance", _READS, None, read.read, code="read"),
    Route("instance", ("PUT",), None, update.update, code="update"),
    Route("instance", ("PATCH",), None, patch.patch, code="patch"),
    Route("instance", ("DELETE",), None, delete.delete, code="delete"),
    # Only a transaction POSTs with an id: the one it assigned to the entry up front.
    Route("instance", ("POST",), None, create.create, code="create", in_transaction=True),
    Route(
        "instance", _READS, "_history", history.history, code="history-instance", versioned=False
    ),
    Route("instance", _READS, "_history", vread.vread, code="vread", versioned=True),
    Route("instance", _READS, COMPARTMENT, search.compartment_search, code="search-type"),
    Route(
        "instance",
        _SEARCHES,
        "$everything",
        search.everything,
        definition=EVERYTHING,
        types=("Patient",),
    ),
    Route("instance", _READS, "$lineage", lineage.lineage_of, definition=LINEAGE),
)


def _level(req: Request) -> Level:
    if req.resource_type is None:
        return "system"
    return "type" if req.resource_id is None else "instance"


def _operation(req: Request, level: Level) -> str | None:
    op = req.operation
    if level == "instance" and op is not None and (op == "*" or is_resource_type(op)):
        return COMPARTMENT
    return op


def _where(req: Request) -> str:
    return "/".join(
        p for p in (req.resource_type, req.resource_id, req.operation, req.version_id) if p
    )


def _fits(route: Route, req: Request, tx: Transaction | None) -> bool:
    if route.in_transaction and tx is None:
        return False
    if route.versioned is not None and route.versioned != (req.version_id is not None):
        return False
    return route.takes_id is None or route.takes_id == (req.resource_id is not None)


def route_for(req: Request, tx: Transaction | None = None) -> Route:
    """The entry that answers `req`; raises the error a request outside the table gets."""
    level = _level(req)
    op = _operation(req, level)
    if req.resource_type is not None:
        if not is_resource_type(req.resource_type):
            raise NotFound(f"Unknown resource type '{req.resource_type}'")
        if req.resource_id is not None and not ID_PATTERN.match(req.resource_id):
            # No resource has such an id; the store is not asked (PostgreSQL refuses U+0000).
            raise Invalid(f"'{escaped(req.resource_id)}' is not a valid resource id")
    at = [
        r
        for r in ROUTES
        if r.level == level
        and r.operation == op
        and (req.resource_type is None or r.applies_to(req.resource_type))
    ]
    if not at and op is not None and op.startswith("$"):
        where = f" on {req.resource_type}" if req.resource_type else ""
        raise NotFound(f"Unknown operation '{escaped(op)}'{where}")
    if not at and level == "instance" and op != "_history":
        raise NotFound(f"No FHIR endpoint at {escaped(_where(req))}")
    for route in at:
        if req.method in route.methods and _fits(route, req, tx):
            if route.needs_criteria and not req.params:
                raise MethodNotAllowed(
                    f"{req.method} on {req.resource_type} needs an id or search criteria"
                )
            return route
    if level == "system":
        raise MethodNotAllowed(f"{req.method} is not supported on {req.base_url}/{op or ''}")
    raise MethodNotAllowed(f"{req.method} is not supported on {escaped(_where(req))}")


def dispatch(ctx: Context, req: Request, tx: Transaction | None = None) -> Result:
    return route_for(req, tx).handler(ctx, req, tx)


def interaction_name(req: Request) -> str:
    """What `req` asks, as metrics and logs name it: the interaction code (`read`,
    `search-type`, ...) or the operation (`$everything`); `refused` when no route takes it."""
    try:
        route = route_for(req)
    except HubError:
        return "refused"
    if route.handler is _bundle:
        return "batch/transaction"  # which of the two is in the body
    return route.code or route.operation or "other"
