"""The repository protocol: what interactions may ask of a FHIR store.

Interactions see only these types; `hub.store.sql` implements them with
SQLAlchemy for PostgreSQL and SQLite.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


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


@dataclass(frozen=True, slots=True)
class TokenRow:
    param: str
    system: str | None
    code: str | None


@dataclass(frozen=True, slots=True)
class NewVersion:
    resource_type: str
    resource_id: str
    version_id: int
    last_updated: datetime
    method: str
    content: bytes | None
    content_hash: str | None
    tokens: Sequence[TokenRow] = ()

    @property
    def deleted(self) -> bool:
        return self.content is None


@dataclass(frozen=True, slots=True)
class TokenCriterion:
    """Match resources having a token index row for `param` (any of `values`)."""

    param: str
    values: tuple[tuple[str | None, str | None], ...]  # (system or None for any, code or None)


@dataclass(frozen=True, slots=True)
class Query:
    """A resolved search: what the store can answer without knowing FHIR."""

    resource_type: str
    ids: tuple[str, ...] | None = None
    tokens: tuple[TokenCriterion, ...] = ()
    after_id: str | None = None
    limit: int | None = None


class Transaction(Protocol):
    def current(self, resource_type: str, resource_id: str) -> Version | None: ...

    def version(self, resource_type: str, resource_id: str, version_id: int) -> Version | None: ...

    def write(self, new: NewVersion, expected_version: int | None) -> None:
        """Store `new` as the current version.

        `expected_version` is the version this write replaces (None: the
        resource must not exist yet). Raises `hub.errors.Conflict` when another
        writer got there first, so two writers can never both win.
        """

    def search(self, query: Query) -> list[Version]: ...

    def lock(self, key: str) -> None:
        """Hold a lock named `key` until the transaction ends.

        Serialises check-then-write sequences (a conditional create) that no
        row lock covers, because the row they would lock does not exist yet.
        """

    def count(self, query: Query) -> int: ...

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
