"""Which interaction answers which request: the one routing table.

The REST API and the batch/transaction processor both call `dispatch`; the
CapabilityStatement lists the interactions named here.
"""

from __future__ import annotations

from collections.abc import Callable

from hub.errors import Invalid, MethodNotAllowed, NotFound
from hub.fhir import ID_PATTERN, is_resource_type
from hub.fhir.content import escaped
from hub.interactions.context import Context, Request, Result
from hub.store.repository import Transaction

Interaction = Callable[[Context, Request, Transaction | None], Result]

TYPE_INTERACTIONS = (
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
)
SYSTEM_INTERACTIONS = ("transaction", "batch", "history-system", "search-system")
OPERATIONS = {"everything": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}


def dispatch(ctx: Context, req: Request, tx: Transaction | None = None) -> Result:
    # Imported here: the interaction modules import this table for their own dispatch.
    from hub.interactions import (
        capabilities,
        create,
        delete,
        history,
        patch,
        read,
        reindex,
        search,
        transaction,
        update,
        vread,
    )

    method, op = req.method, req.operation
    if req.resource_type is None:
        if op == "metadata" and method == "GET":
            return capabilities.capabilities(ctx, req, tx)
        if op == "_history" and method == "GET":
            return history.history(ctx, req, tx)
        if op is None and method == "POST":
            if tx is not None:
                raise Invalid("A Bundle entry cannot post another batch or transaction")
            return transaction.process(ctx, req, dispatch)
        if op is None and method == "GET":
            return search.system_search(ctx, req, tx)
        if op == "_search" and method == "POST":
            return search.system_search(ctx, req, tx)
        if op == "$reindex" and method == "POST" and req.resource_id is None:
            return reindex.start(ctx, req, tx)
        if op == "$reindex" and method == "GET":
            return reindex.job_status(ctx, req, tx)
        raise MethodNotAllowed(f"{method} is not supported on {req.base_url}/{op or ''}")
    if not is_resource_type(req.resource_type):
        raise NotFound(f"Unknown resource type '{req.resource_type}'")
    if req.resource_id is not None and not ID_PATTERN.match(req.resource_id):
        # No resource has such an id; the store is not asked (PostgreSQL refuses U+0000).
        raise Invalid(f"'{escaped(req.resource_id)}' is not a valid resource id")
    chosen: Interaction | None = None
    if req.resource_id is None:
        if op is None:
            chosen = {
                "GET": search.search,
                "POST": create.create,
                "PUT": update.update,
                "PATCH": patch.patch,
                "DELETE": delete.delete,
            }.get(method)
            if method in ("PUT", "PATCH", "DELETE") and not req.params:
                raise MethodNotAllowed(
                    f"{method} on {req.resource_type} needs an id or search criteria"
                )
        elif op == "_search" and method == "POST":
            chosen = search.search
        elif op == "_history" and method == "GET":
            chosen = history.history
    elif op is None:
        chosen = {
            "GET": read.read,
            "PUT": update.update,
            "PATCH": patch.patch,
            "DELETE": delete.delete,
            # Only a transaction POSTs with an id: the one it assigned to the entry up front.
            "POST": create.create if tx is not None else None,
        }.get(method)
    elif op == "_history" and method == "GET":
        chosen = history.history if req.version_id is None else vread.vread
    elif op == "$everything" and method in ("GET", "POST"):
        chosen = search.everything
    elif op == "$lineage" and method == "GET":
        from hub.interactions.lineage import lineage_of

        chosen = lineage_of
    elif op is not None and (op == "*" or is_resource_type(op)) and method == "GET":
        chosen = search.compartment_search
    elif op is not None and op.startswith("$"):
        raise NotFound(f"Unknown operation '{op}' on {req.resource_type}")
    elif op is not None and op != "_history":
        raise NotFound(f"No FHIR endpoint at {req.resource_type}/{req.resource_id}/{op}")
    if chosen is None:
        where = "/".join(p for p in (req.resource_type, req.resource_id, op, req.version_id) if p)
        raise MethodNotAllowed(f"{method} is not supported on {where}")
    return chosen(ctx, req, tx)
