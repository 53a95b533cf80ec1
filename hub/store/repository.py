"""The repository protocol: what interactions may ask of a FHIR store.

Interactions see only these types; `hub.store.sql` implements them with
SQLAlchemy for PostgreSQL and SQLite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Executable, Table

from hub.store.cancel import Cancellation


@dataclass(frozen=True, slots=True)
class Version:
    """One stored version of a resource; `content` is the stored JSON, None when deleted."""

    resource_type: str
    resource_id: str
    version_id: int
    last_updated: datetime
    deleted: bool
    content: bytes | None
    content_hash: str | None = None
    method: str = "PUT"
    seq: int | None = None


# Search index rows of one resource version, by index table name.
IndexRows = dict[str, list[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class NewVersion:
    resource_type: str
    resource_id: str
    version_id: int
    last_updated: datetime
    method: str
    content: bytes | None
    content_hash: str | None
    index: IndexRows = field(default_factory=dict)
    # The local resources (type, id) this version references (`hub.fhir.references`).
    references: tuple[tuple[str, str], ...] = ()

    @property
    def deleted(self) -> bool:
        return self.content is None


class Transaction(Protocol):
    dialect: str  # "postgresql" or "sqlite": lets search pick dialect-specific plans

    def current(self, resource_type: str, resource_id: str) -> Version | None: ...

    def prefetch(self, keys: Sequence[tuple[str, str]]) -> None:
        """Read the current versions of many resources in one go: `current` then answers
        them (and whatever this transaction writes) from memory (a batch of feed messages)."""

    def version(self, resource_type: str, resource_id: str, version_id: int) -> Version | None: ...

    def write(self, new: NewVersion, expected_version: int | None) -> None:
        """Store `new` as the current version.

        `expected_version` is the version this write replaces (None: the
        resource must not exist yet). Raises `hub.errors.Conflict` when another
        writer got there first, so two writers can never both win.
        """

    def rows(self, statement: Executable) -> Sequence[Any]:
        """Run a query built by `hub.search` (a SELECT over the store's tables)."""

    def execute(
        self, statement: Executable, rows: Sequence[Mapping[str, Any]] | None = None
    ) -> int:
        """Run a write of another part of the hub (the message store) in this transaction;
        with `rows`, once for each (an executemany)."""

    def add_rows(self, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert rows of another part of the hub (lineage) with this transaction's new
        resources: at its next statement or its commit, in the same round trip."""

    def lock_row(self, statement: Executable) -> Sequence[Any]:
        """SELECT … FOR UPDATE (PostgreSQL); SQLite writers are serialised already."""

    def replace_index(self, resource_type: str, index: Mapping[str, IndexRows]) -> None:
        """Replace the search index rows of resources of one type (id -> rows): a reindex."""

    def load(self, keys: Sequence[tuple[str, str]]) -> list[Version]:
        """The current, live versions of (type, id) pairs, in the order asked."""

    def live(self, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (type, id) exist and are not deleted, this transaction's writes
        included; reads the index only, not the resources."""

    def referrers(
        self, targets: Sequence[tuple[str, str]], limit: int
    ) -> list[tuple[str, str, str, str]]:
        """Up to `limit` current resources that reference one of `targets`, as
        (type, id, target type, target id)."""

    def limited(
        self, seconds: float, cancellation: Cancellation | None = None
    ) -> AbstractContextManager[None]:
        """Stop the statements of the block once it has run `seconds`, or when `cancellation`
        is cancelled, with `hub.errors.Timeout`; the transaction is then unusable."""

    def lock(self, key: str) -> None:
        """Hold a lock named `key` until the transaction ends.

        Serialises check-then-write sequences (a conditional create) that no
        row lock covers, because the row they would lock does not exist yet.
        The wait is bounded: `hub.errors.Busy` when it would be too long, or
        when too many units of this process wait already.
        """

    def try_lock(self, key: str) -> bool:
        """Take the lock named `key` if it is free now; whether it was taken."""

    def history(
        self,
        resource_type: str | None,
        resource_id: str | None,
        since: datetime | None,
        before_seq: int | None,
        limit: int,
    ) -> list[Version]: ...

    def history_count(
        self, resource_type: str | None, resource_id: str | None, since: datetime | None
    ) -> int: ...


class Repository(Protocol):
    def read(self, resource_type: str, resource_id: str) -> Version | None:
        """The current version, outside any transaction (the fast path for reads)."""

    def transaction(self) -> AbstractContextManager[Transaction]:
        """A unit of work: committed when the block ends, rolled back when it raises."""

    def snapshot(self) -> AbstractContextManager[Transaction]:
        """A read-only unit of work for searches and history."""

    def close(self) -> None: ...
