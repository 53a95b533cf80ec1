"""batch and transaction: https://hl7.org/fhir/R4/http.html#transaction

A transaction runs every entry in one database transaction, in the spec's
order (DELETE, POST, PUT and PATCH, then GET and HEAD), after giving each
created resource its id so that `urn:uuid:` fullUrls and conditional
references (`Patient?identifier=...`) can be rewritten to real references
first. Any failing entry fails the whole Bundle. A batch runs each entry on
its own and reports each entry's outcome.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from hub.errors import (
    Conflict,
    HubError,
    Invalid,
    Issue,
    MethodNotAllowed,
    NotFound,
    PreconditionFailed,
    outcome_of,
    status_of,
)
from hub.fhir import ID_PATTERN, is_resource_type
from hub.fhir.content import escaped
from hub.interactions import create, delete, patch, update
from hub.interactions.bundles import bundle, full_url, status_line, stored, version_response
from hub.interactions.context import Context, Request, Result
from hub.interactions.executor import create_match, execute, match, matches
from hub.interactions.plan import ConditionalDelete, Delete, Plan, Write
from hub.interactions.writes import new_id
from hub.store.cancel import Cancellation
from hub.store.repository import Transaction

_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}

Dispatch = Callable[[Context, Request, Transaction | None], Result]


def entry_request(
    base_url: str, index: int, entry: Any, prefer: str | None, parent: Request | None = None
) -> Request:
    """Turn `Bundle.entry[i].request` (and its resource) into an interaction request.

    With the Bundle's own request as `parent`, the entry shares its cancellation: a client
    that goes away stops the entries' searches, and they share one time limit.
    """
    where = f"Bundle.entry[{index}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
        raise Invalid(f"{where} has no request", expression=(f"{where}.request",))
    request = entry["request"]
    for name in ("ifMatch", "ifNoneExist", "ifNoneMatch"):
        if name in request and not isinstance(request[name], str):
            raise Invalid(
                f"{where}.request.{name} must be a string",
                expression=(f"{where}.request.{name}",),
            )
    method = str(request.get("method", "")).upper()
    if method not in _ORDER:
        raise Invalid(
            f"{where}.request.method '{method}' is not a FHIR interaction method",
            expression=(f"{where}.request.method",),
        )
    url = request.get("url")
    if not isinstance(url, str) or not url:
        raise Invalid(f"{where}.request.url is missing", expression=(f"{where}.request.url",))
    if url.startswith(base_url + "/"):
        url = url[len(base_url) + 1 :]
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    req = Request(
        method="GET" if method == "HEAD" else method,
        base_url=base_url,
        params=parse_qsl(parts.query, keep_blank_values=True),
        body=entry.get("resource"),
        if_match=request.get("ifMatch"),
        if_none_exist=request.get("ifNoneExist"),
        if_none_match=request.get("ifNoneMatch"),
        prefer_return=prefer,
        cancel=parent.cancel if parent is not None else None,
    )
    if not segments or not is_resource_type(segments[0]):
        raise NotFound(
            f"{where}.request.url '{url}' names no known resource type",
            expression=(f"{where}.request.url",),
        )
    req.resource_type = segments[0]
    rest = segments[1:]
    if rest and rest[0].startswith(("_", "$")):
        req.operation = rest.pop(0)
    elif rest:
        req.resource_id = rest.pop(0)
        if rest:
            req.operation = rest.pop(0)
            if rest:
                req.version_id = rest.pop(0)
    if method == "PATCH" and req.body is None:
        # A PATCH entry carries its JSON Patch as a Binary resource.
        raise Invalid(
            f"{where} PATCH needs the patch document in resource", expression=(f"{where}.resource",)
        )
    if method == "POST" and req.resource_id is not None:
        # The hub assigns POSTed entries their id; the url names only the type.
        raise Invalid(
            f"{where}.request.url '{url}': POST creates at {req.resource_type}",
            expression=(f"{where}.request.url",),
        )
    if (
        method == "PATCH"
        and isinstance(req.body, dict)
        and req.body.get("resourceType") == "Binary"
    ):
        try:
            req.body = orjson.loads(base64.b64decode(req.body.get("data", "")))
        except (ValueError, TypeError):  # binascii.Error and JSONDecodeError are ValueErrors
            raise Invalid(
                f"{where}.resource: the Binary holds no base64 JSON Patch document",
                expression=(f"{where}.resource.data",),
            ) from None
    return req


def _rewrite(value: Any, path: str, resolve: Callable[[str, str], str | None]) -> Any:
    """A copy of `value` whose `reference`s are resolved; `resolve` gets each with the path of
    the element holding it (`path` names `value`). Iterative: a body may nest deeply.

    A Bundle inside (an entry that stores a document or message Bundle) is left as it is: its
    references resolve against its own entries' fullUrls, not the transaction's.
    """
    top: list[Any] = [value]
    stack: list[tuple[Any, Any, Any, str]] = [(top, 0, value, path)]
    while stack:
        parent, key, original, where = stack.pop()
        copy: dict[str, Any] | list[Any]
        if isinstance(original, dict) and original.get("resourceType") == "Bundle":
            continue  # `parent[key]` keeps the original
        if isinstance(original, dict):
            copy = dict(original)
            for k, v in original.items():
                if k == "reference" and isinstance(v, str):
                    copy[k] = resolve(v, where) or v
                elif isinstance(v, dict | list):
                    stack.append((copy, k, v, f"{where}.{k}"))
        elif isinstance(original, list):
            copy = list(original)
            stack.extend(
                (copy, i, v, f"{where}[{i}]")
                for i, v in enumerate(original)
                if isinstance(v, dict | list)
            )
        else:
            continue
        parent[key] = copy
    return top[0]


def _located(index: int, error: HubError) -> HubError:
    if error.message.startswith("Bundle.entry["):  # an entry's own error, located already
        return error
    where = f"Bundle.entry[{index}]"
    issues = []
    for issue in error.issues:
        paths = tuple(
            f"{where}.resource" + p[p.index(".") :]
            if "." in p and not p.startswith("Bundle")
            else p
            for p in issue.expression
        ) or (where,)
        issues.append(Issue(issue.code, f"{where}: {issue.diagnostics}", issue.severity, paths))
    error.issues = issues
    error.message = f"{where}: {error.message}"
    return error


def _entry_response(req: Request, result: Result) -> dict[str, Any]:
    response: dict[str, Any] = {"status": status_line(result.status)}
    entry: dict[str, Any] = {}
    version = result.version
    if version is not None:
        response = version_response(version, result.status, location=req.method != "GET")
        if req.prefer_return != "minimal":
            entry["fullUrl"] = full_url(req.base_url, version)
            entry["resource"] = stored(version)
    elif result.body is not None:
        entry["resource"] = result.body
    elif "ETag" in result.headers:
        response["etag"] = result.headers["ETag"]
    entry["response"] = response
    return entry


def process(ctx: Context, req: Request, dispatch: Dispatch) -> Result:
    body = req.body
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise Invalid(
            "POST to the base URL takes a batch or transaction Bundle", expression=("Bundle",)
        )
    kind = body.get("type")
    entries = body.get("entry") or []
    if not isinstance(entries, list):
        raise Invalid("Bundle.entry must be an array", expression=("Bundle.entry",))
    # The entries' searches share one time limit, and stop together if the client goes away.
    if req.cancel is None:
        req.cancel = Cancellation()
    req.cancel.deadline = time.monotonic() + ctx.settings.search_timeout_seconds
    if kind == "transaction":
        return _transaction(ctx, req, entries, dispatch)
    if kind == "batch":
        return _batch(ctx, req, entries, dispatch)
    raise Invalid(
        f"Bundle.type '{kind}' cannot be processed: post a batch or a transaction",
        expression=("Bundle.type",),
    )


def _batch(ctx: Context, req: Request, entries: list[Any], dispatch: Dispatch) -> Result:
    out = []
    for i, entry in enumerate(entries):
        try:
            entry_req = entry_request(req.base_url, i, entry, req.prefer_return, req)
            if entry_req.resource_type is None:
                raise Invalid("A batch cannot hold another batch or transaction")
            out.append(_entry_response(entry_req, dispatch(ctx, entry_req, None)))
        except HubError as e:
            e = _located(i, e)
            out.append(
                {"response": {"status": status_line(status_of(e)), "outcome": outcome_of(e)}}
            )
    return Result(200, body=bundle("batch-response", out, []))


def _transaction(ctx: Context, req: Request, entries: list[Any], dispatch: Dispatch) -> Result:
    requests = []
    for i, entry in enumerate(entries):
        try:
            requests.append(entry_request(req.base_url, i, entry, req.prefer_return, req))
        except HubError as e:
            raise _located(i, e) from None
    full_urls = [e.get("fullUrl") if isinstance(e, dict) else None for e in entries]
    order = sorted(range(len(requests)), key=lambda i: _ORDER[requests[i].method])
    writing = [i for i in order if requests[i].method in _WRITES and not requests[i].operation]
    results: dict[int, Result] = {}
    targets: dict[str, int] = {}
    with _locating(targets), ctx.unit(None) as tx:
        # 1. What the deletes remove (the writes and matches after them do not see it), then
        # ids for everything about to be written.
        deletes: dict[int, Delete] = {}
        for i in writing:
            r = requests[i]
            if r.method == "DELETE":
                try:
                    found = _delete_target(ctx, tx, _planned(ctx, r), r.base_url)
                except HubError as e:
                    raise _located(i, e) from None
                if found is None:
                    results[i] = Result(204)
                else:
                    deletes[i] = found
        removed = frozenset((d.resource_type, d.resource_id) for d in deletes.values())
        aliases: dict[str, str] = {}
        for i in writing:
            r = requests[i]
            if r.method == "DELETE":
                continue
            try:
                _assign_id(ctx, tx, r, results, i, removed)
            except HubError as e:
                raise _located(i, e) from None
            if r.resource_id is not None:
                key = f"{r.resource_type}/{r.resource_id}"
                if key in targets and i not in results:
                    raise _located(
                        i,
                        Invalid(
                            f"{key} is changed by entry {targets[key]} too; a transaction changes "
                            "each resource once"
                        ),
                    )
                targets[key] = i
                alias = full_urls[i]
                if isinstance(alias, str) and alias:
                    aliases[alias] = key

        # 2. Rewrite references to fullUrls and conditional references.
        def resolve(reference: str, where: str) -> str | None:
            if reference in aliases:
                return aliases[reference]
            if reference.startswith(("urn:uuid:", "urn:oid:")):
                # Such a reference means only the entry with that fullUrl: stored as it is, it
                # would point nowhere.
                raise Invalid(
                    f"{where}: '{reference}' is the fullUrl of no resource this transaction "
                    "creates or updates",
                    expression=(where,),
                )
            type_, sep, query = reference.partition("?")
            if sep and is_resource_type(type_):
                criteria = parse_qsl(query, keep_blank_values=True)
                found = [
                    v
                    for v in matches(ctx, tx, type_, criteria, req.base_url, 2 + len(removed))
                    if (v.resource_type, v.resource_id) not in removed
                ]
                if len(found) != 1:
                    raise PreconditionFailed(
                        f"The conditional reference '{reference}' matches {len(found)} resources; "
                        "it must match exactly one"
                    )
                return f"{type_}/{found[0].resource_id}"
            return None

        for i in writing:
            r = requests[i]
            if i in results or r.method not in ("POST", "PUT"):
                continue
            try:
                r.body = _rewrite(r.body, str(r.resource_type), resolve)
            except HubError as e:
                raise _located(i, e) from None
        # 3. One plan of every write, in the spec's order; then the reads.
        planned: list[int] = []
        writes: list[Write] = []
        for i in writing:
            if i in results:
                continue
            try:
                writes.append(deletes[i] if i in deletes else _planned(ctx, requests[i]))
            except HubError as e:
                raise _located(i, e) from None
            planned.append(i)
        try:
            done = execute(ctx, tx, Plan(tuple(writes), req.base_url))
        except HubError as e:
            entry = planned[e.write] if e.write is not None else planned[0]
            raise _located(_entry_of(e, targets, entry), e) from None
        results.update(zip(planned, done, strict=True))
        for i in order:
            if i not in results:
                results[i] = _run(ctx, i, requests[i], tx, dispatch, targets)
    out = [_entry_response(requests[i], results[i]) for i in range(len(requests))]
    return Result(200, body=bundle("transaction-response", out, []))


_WRITES = ("POST", "PUT", "PATCH", "DELETE")
_PLANNERS: dict[str, Callable[[Context, Request], Write]] = {
    "POST": create.planned,
    "PUT": update.planned,
    "PATCH": patch.planned,
    "DELETE": delete.planned,
}


def _planned(ctx: Context, r: Request) -> Write:
    """The write of an entry, checked as the REST API checks a request (`routes.dispatch`)."""
    if r.resource_id is not None and not ID_PATTERN.match(r.resource_id):
        raise Invalid(f"'{escaped(r.resource_id)}' is not a valid resource id")
    if r.resource_id is None and not r.params and r.method != "POST":
        raise MethodNotAllowed(f"{r.method} on {r.resource_type} needs an id or search criteria")
    return _PLANNERS[r.method](ctx, r)


def _delete_target(ctx: Context, tx: Transaction, write: Write, base_url: str) -> Delete | None:
    """A delete entry's resource: a conditional one's match (None: nothing to delete)."""
    if isinstance(write, ConditionalDelete):
        found = match(ctx, tx, write.resource_type, write.criteria, base_url)
        if found is None:
            return None
        return Delete(write.resource_type, found.resource_id, write.if_match)
    assert isinstance(write, Delete)
    return write


def _assign_id(
    ctx: Context,
    tx: Transaction,
    r: Request,
    results: dict[int, Result],
    i: int,
    removed: frozenset[tuple[str, str]],
) -> None:
    assert r.resource_type is not None
    if r.method == "POST":
        if r.if_none_exist:
            criteria = tuple(parse_qsl(r.if_none_exist, keep_blank_values=True))
            existing = create_match(ctx, tx, r.resource_type, criteria, r.base_url, removed)
            if existing is not None:
                r.resource_id = existing.resource_id
                results[i] = Result(200, version=existing)
                return
        # The transaction holds the conditional create's lock: a plain create follows.
        r.resource_id = new_id()
        r.if_none_exist = None
    elif r.resource_id is None and r.params:
        found = match(ctx, tx, r.resource_type, r.params, r.base_url, removed)
        if found is not None:
            r.resource_id = found.resource_id
            if r.method == "PUT" and isinstance(r.body, dict) and "id" not in r.body:
                # A conditional update's body need not carry the id (update checks one that does).
                r.body = {**r.body, "id": r.resource_id}
        elif r.method == "PUT":
            body_id = r.body.get("id") if isinstance(r.body, dict) else None
            r.resource_id = body_id or new_id()
            if body_id is None and isinstance(r.body, dict):
                r.body = {**r.body, "id": r.resource_id}
        else:
            raise NotFound(f"No {r.resource_type} matches the criteria of the PATCH")
        r.params = []


def _run(
    ctx: Context, i: int, r: Request, tx: Transaction, dispatch: Dispatch, targets: dict[str, int]
) -> Result:
    try:
        return dispatch(ctx, r, tx)
    except HubError as e:
        raise _located(_entry_of(e, targets, i), e) from None


@contextmanager
def _locating(targets: dict[str, int]) -> Iterator[None]:
    """New resources go in together, at the next statement or the commit: a create that lost
    its race fails there, outside its entry, and is named by the entry that wrote it."""
    try:
        yield
    except Conflict as e:
        entry = _entry_of(e, targets, -1)
        raise (_located(entry, e) if entry >= 0 else e) from None


def _entry_of(error: HubError, targets: dict[str, int], default: int) -> int:
    """The entry an error is about: the one that wrote the resource a lost race names (new
    resources are inserted together, at the next statement of any entry), else `default`."""
    for key in getattr(error, "resources", ()):
        if key in targets:
            return targets[key]
    return default
