"""Search parameters stored as data: which ones are searchable, and the registries they make.

SearchParameter resources live in the store like any other resource. Each
stored one the registry can take has a row in `search_param_state`: `pending`
from the moment its definition is written until a reindex job
(`hub.parameters.reindex`) has extracted it from every resource of its bases,
then `indexed`. Writes index with every stored parameter, pending ones too,
so that nothing written during a reindex is missed; searches accept only the
indexed ones. Every change to that picture bumps `search_registry.version`,
which lets each process tell cheaply whether its registries are current.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from hub.errors import Busy
from hub.fhir import R4_RESOURCE_TYPES
from hub.search.registry import (
    COMMON,
    Registry,
    SearchParam,
    assemble,
    from_resources,
    shipped_params,
)
from hub.store.repository import Repository, Transaction
from hub.store.search.states import RESOURCE_TYPE as RESOURCE_TYPE
from hub.store.search.states import (
    StoredParameter,
    StoreError,
    bump,
    delete_state,
    insert_state,
    read_version,
    state_of,
    stored_parameters,
    update_state,
)

log = logging.getLogger(__name__)

PENDING = "pending"
INDEXED = "indexed"
# The elements that decide a parameter's index rows: a change to any other needs no reindex.
_DEFINING = ("code", "base", "type", "expression", "target", "component")


def utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything the hub stores is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def definition_hash(resource: Mapping[str, Any]) -> str:
    defining = {k: resource.get(k) for k in _DEFINING}
    return hashlib.sha256(orjson.dumps(defining, option=orjson.OPT_SORT_KEYS)).hexdigest()


def usable(resource: Mapping[str, Any]) -> bool:
    """Whether a stored SearchParameter feeds the registry: it has a url and is not retired."""
    return bool(resource.get("url")) and resource.get("status") != "retired"


def resource_types(bases: Iterable[str]) -> frozenset[str]:
    """The resource types that parameters of these bases apply to (`Resource`: every one)."""
    out: set[str] = set()
    for base in bases:
        if base in (COMMON, "DomainResource"):
            return R4_RESOURCE_TYPES
        out.add(base)
    return frozenset(out)


@dataclass(frozen=True)
class Pending:
    """A stored parameter whose values are not all in the index yet."""

    resource_id: str
    url: str
    version_id: int
    definition_hash: str
    types: frozenset[str]
    written: datetime  # when its current version was written


@dataclass(frozen=True)
class Registries:
    """The registries of one moment: what searches accept, and what writes index."""

    search: Registry
    write: Registry
    version: int
    pending: tuple[Pending, ...] = ()


def build(repo: Repository, shipped: Sequence[SearchParam]) -> Registries:
    """The registries from the shipped parameters and the SearchParameters in the store."""
    with repo.snapshot() as tx:
        version = read_version(tx)
        rows = stored_parameters(tx)
    latest: dict[str, tuple[StoredParameter, dict[str, Any]]] = {}  # by url: the last written wins
    for row in rows:
        doc = orjson.loads(row.content)
        if usable(doc):
            latest.pop(doc["url"], None)
            latest[doc["url"]] = (row, doc)
    base = assemble(shipped)
    if not latest:
        return Registries(base, base, version)
    added, refused = from_resources([doc for _, doc in latest.values()], shipped)
    by_url: dict[str, list[SearchParam]] = {}
    for param in added:
        by_url.setdefault(str(param.url), []).append(param)
    searchable: set[str] = set()
    pending: list[Pending] = []
    for url, (row, doc) in latest.items():
        digest = definition_hash(doc)
        if row.state == INDEXED and row.definition_hash == digest:
            searchable.add(url)
        elif url in by_url:
            types = resource_types(b for p in by_url[url] for b in p.base)
            pending.append(
                Pending(row.resource_id, url, row.version_id, digest, types, utc(row.last_updated))
            )
    write = assemble([*shipped, *added], refused)
    if not pending:
        return Registries(write, write, version)
    search = assemble([*shipped, *(p for p in added if p.url in searchable)], refused)
    return Registries(search, write, version, tuple(pending))


def _same_as_shipped(params: Iterable[SearchParam], shipped: Registry) -> bool:
    """Whether the shipped definitions index exactly these parameters already."""
    for p in params:
        s = shipped.by_type.get(p.base[0], {}).get(p.code)
        if s is None or p.components or s.components:
            return False
        if (s.type, s.expression, sorted(s.targets)) != (p.type, p.expression, sorted(p.targets)):
            return False
    return True


def track(
    tx: Transaction,
    shipped: Registry,
    resource: Mapping[str, Any],
    version_id: int,
    *,
    created: bool,
) -> str | None:
    """Record the state of a SearchParameter just written; None when the registry cannot
    take it. A new or changed definition is pending, unless the shipped definitions index
    exactly the same values already."""
    resource_id = str(resource["id"])
    row = state_of(tx, resource_id)
    # Whether the registry takes it does not depend on the other parameters.
    params = from_resources([resource])[0] if usable(resource) else []
    if not params:
        if row is not None:
            delete_state(tx, resource_id)
            bump(tx)
        return None
    digest = definition_hash(resource)
    kept = not created and row is not None and (row.state, row.definition_hash) == (INDEXED, digest)
    state = INDEXED if kept or _same_as_shipped(params, shipped) else PENDING
    url = str(resource["url"])
    values = {
        "url": url,
        "version_id": version_id,
        "definition_hash": digest,
        "state": state,
        "updated": datetime.now(UTC),
    }
    if row is None:
        insert_state(tx, resource_id, values)
        bump(tx)
    else:
        update_state(tx, resource_id, values)
        if (row.state, row.definition_hash, row.url) != (state, digest, url):
            bump(tx)
    return state


def untrack(tx: Transaction, resource_id: str) -> None:
    """A SearchParameter was deleted: its parameters leave the registries."""
    delete_state(tx, resource_id)
    bump(tx)


def mark_indexed(tx: Transaction, done: Iterable[Pending]) -> int:
    """Record that these parameters' values are in the index; how many were marked.

    A parameter whose definition changed (or that was deleted) since the job
    read it stays as it is: the job did not index its current definition.
    """
    marked = 0
    for p in done:
        found = state_of(tx, p.resource_id)
        values = {"state": INDEXED, "updated": datetime.now(UTC)}
        if found is not None:
            if found.definition_hash == p.definition_hash:
                update_state(tx, p.resource_id, values)
                marked += 1
            continue
        current = tx.current(RESOURCE_TYPE, p.resource_id)
        if current is not None and not current.deleted and current.version_id == p.version_id:
            insert_state(
                tx,
                p.resource_id,
                {
                    "url": p.url,
                    "version_id": p.version_id,
                    "definition_hash": p.definition_hash,
                    **values,
                },
            )
            marked += 1
    bump(tx)
    return marked


class RegistryHolder:
    """The registries one process uses, rebuilt when the stored parameters change.

    `current()` compares the store's registry version with its own at most
    once every `refresh_seconds` (None: never; 0: on every call), and on
    every call for a short while after `watch()` (this process wrote a
    SearchParameter), and rebuilds the registries when the versions differ.
    Inside `held()` it answers from memory.
    """

    def __init__(
        self,
        repo: Repository,
        *,
        refresh_seconds: float | None = None,
        shipped: Sequence[SearchParam] | None = None,
    ) -> None:
        self.repo = repo
        self.refresh_seconds = refresh_seconds
        self.params: list[SearchParam] = list(shipped if shipped is not None else shipped_params())
        self.shipped = assemble(self.params)
        self._lock = threading.Lock()
        self._next_check = time.monotonic() + (refresh_seconds or 0.0)
        self._eager_until = 0.0
        self._held = threading.local()
        self._current = self._build()

    def _build(self) -> Registries:
        try:
            return build(self.repo, self.params)
        except StoreError as e:
            # An unmigrated store: serve the shipped parameters and look again later.
            log.warning("stored search parameters could not be read: %s", e)
            return Registries(self.shipped, self.shipped, -1)

    def current(self) -> Registries:
        held: Registries | None = getattr(self._held, "registries", None)
        if held is not None:
            return held
        if self.refresh_seconds is not None:
            now = time.monotonic()
            if now >= self._next_check or now < self._eager_until:
                self._next_check = now + self.refresh_seconds
                self._check()
        return self._current

    @contextmanager
    def held(self) -> Iterator[Registries]:
        """The registries of one unit of work: checked now, before the unit takes its
        connection, and answered from memory in this thread until it ends.

        A check reads the store on a connection of its own. A unit that holds one, and
        perhaps a lock that other units wait for with the rest of the pool, must never
        wait for a second: none might come free.
        """
        outer: Registries | None = getattr(self._held, "registries", None)
        if outer is not None:
            yield outer
            return
        self._held.registries = self.current()
        try:
            yield self._held.registries
        finally:
            self._held.registries = None

    def _check(self) -> None:
        try:
            with self.repo.snapshot() as tx:
                version = read_version(tx)
        except (StoreError, Busy) as e:
            log.warning("the search registry version could not be read: %s", e)
            return
        if version != self._current.version:
            self.refresh(newer_than=self._current.version)

    def refresh(self, newer_than: int | None = None) -> Registries:
        """Rebuild now (unless another thread already did since version `newer_than`)."""
        with self._lock:
            if newer_than is None or self._current.version == newer_than:
                self._current = self._build()
            return self._current

    def watch(self) -> None:
        """This process wrote a SearchParameter: look for its commit on every call a while."""
        if self.refresh_seconds is not None:
            self._eager_until = time.monotonic() + max(self.refresh_seconds, 2.0)
