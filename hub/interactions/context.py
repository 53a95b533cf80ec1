"""The values interactions take and return: a request, the context, a result.

Interactions never see the web framework: the REST routes and the
batch/transaction processor both build a `Request` and call `dispatch`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hub.parameters.stored import RegistryHolder
from hub.search.registry import Registry
from hub.settings import Settings
from hub.store.cancel import Cancellation
from hub.store.reader import AsyncReader
from hub.store.repository import Repository, Transaction, Version


@dataclass(frozen=True)
class Context:
    """What every interaction may use; built once at start-up."""

    repo: Repository
    registries: RegistryHolder
    settings: Settings
    # Reads by id on the event loop (PostgreSQL), once the app has opened it.
    reader: AsyncReader | None = None

    @property
    def registry(self) -> Registry:
        """What searches accept: the shipped parameters and the indexed stored ones."""
        return self.registries.current().search

    @property
    def index_registry(self) -> Registry:
        """What writes index: every stored parameter, those awaiting a reindex too."""
        return self.registries.current().write

    @contextmanager
    def unit(self, tx: Transaction | None) -> Iterator[Transaction]:
        """Join the caller's transaction (a transaction Bundle) or open one.

        A unit of its own settles its registries before it takes a connection
        (`RegistryHolder.held`): checking them inside would need a second one.
        """
        if tx is not None:
            yield tx
        else:
            with self.registries.held(), self.repo.transaction() as own:
                yield own

    @contextmanager
    def reading(self, tx: Transaction | None) -> Iterator[Transaction]:
        if tx is not None:
            yield tx
        else:
            with self.registries.held(), self.repo.snapshot() as own:
                yield own


@dataclass
class Request:
    """One FHIR interaction, however it arrived (HTTP or a Bundle entry)."""

    method: str
    base_url: str
    resource_type: str | None = None
    resource_id: str | None = None
    version_id: str | None = None
    operation: str | None = None  # "_history", "_search", "metadata", ...
    params: list[tuple[str, str]] = field(default_factory=list)
    body: Any = None
    if_match: str | None = None
    if_none_exist: str | None = None
    if_none_match: str | None = None
    if_modified_since: datetime | None = None
    prefer_return: str | None = None
    prefer_handling: str | None = None  # strict (the default) or lenient
    # Set by the API: cancelled when the client goes away, which stops the request's searches.
    cancel: Cancellation | None = None


@dataclass
class Result:
    """What an interaction produced; the API and the Bundle processor render it.

    `version` is the resource version concerned (its stored JSON is the body,
    and it gives ETag, Last-Modified and Location); `body` is a generated body
    (Bundle, CapabilityStatement, OperationOutcome) when there is no version.
    """

    status: int
    version: Version | None = None
    body: dict[str, Any] | None = None
    location: bool = False
    outcome: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def etag(version: Version) -> str:
    return f'W/"{version.version_id}"'


def version_location(base_url: str, version: Version) -> str:
    return f"{base_url}/{version.resource_type}/{version.resource_id}/_history/{version.version_id}"


def parse_etag(value: str) -> int | None:
    """`W/"3"` (or `"3"`, or 3) to 3; None when it is no version number."""
    text = value.strip()
    text = text.removeprefix("W/").strip('"')
    return int(text) if text.isdigit() else None
