"""Writes as values: what a REST interaction, a transaction Bundle or a feed asks to change.

Every write path builds a `Plan` (a tuple of writes) and hands it to
`hub.interactions.executor.execute`, which verifies and applies it in one
transaction: the versioning, conditional and referential rules live there only.

The resource bodies a write carries are never changed: the executor stores
copies (with the server's id and meta). They are expected valid already
(`hub.fhir.validate`): each path validates what it receives, with the errors
located its own way.

A write of a resource may carry its local references (`references`), when its
path walked them already (a feed asks which have arrived before it writes):
the executor then checks and stores those instead of walking the resource again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hub.fhir.references import Found

# Search criteria of a conditional write, as (name, value) pairs: `identifier=a|b`.
Criteria = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Create:
    """POST [type]. `id`: assigned up front (a transaction Bundle, to rewrite references to
    the entry first), and then new; None: the executor makes a uuid."""

    resource_type: str
    resource: dict[str, Any]
    id: str | None = None
    # `hub.fhir.references.local_references(resource, plan.base_url)`, when known already.
    references: tuple[Found, ...] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ConditionalCreate:
    """POST [type] with If-None-Exist: nothing is written when one resource matches
    (its version is the result); several matching is 412."""

    resource_type: str
    criteria: Criteria
    resource: dict[str, Any]
    id: str | None = None
    # `hub.fhir.references.local_references(resource, plan.base_url)`, when known already.
    references: tuple[Found, ...] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Update:
    """PUT [type]/[id]: creates or updates; `if_match` is the version it must replace (412).
    An update whose content is unchanged makes no version."""

    resource_type: str
    resource_id: str
    resource: dict[str, Any]
    if_match: int | None = None
    # `hub.fhir.references.local_references(resource, plan.base_url)`, when known already.
    references: tuple[Found, ...] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ConditionalUpdate:
    """PUT [type]?criteria: updates the one match, creates when none does (with the body's
    id, or a new one), 412 when several do."""

    resource_type: str
    criteria: Criteria
    resource: dict[str, Any]
    if_match: int | None = None
    # `hub.fhir.references.local_references(resource, plan.base_url)`, when known already.
    references: tuple[Found, ...] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Patch:
    """PATCH [type]/[id] or [type]?criteria with a JSON Patch (RFC 6902) document."""

    resource_type: str
    resource_id: str | None
    operations: tuple[dict[str, Any], ...]
    if_match: int | None = None
    criteria: Criteria = ()

    def __post_init__(self) -> None:
        if (self.resource_id is None) == (not self.criteria):
            raise ValueError("A Patch names its resource by id or by criteria, not both")


@dataclass(frozen=True, slots=True)
class Delete:
    """DELETE [type]/[id]: deleting what does not exist (or no longer does) does nothing."""

    resource_type: str
    resource_id: str
    if_match: int | None = None


@dataclass(frozen=True, slots=True)
class ConditionalDelete:
    """DELETE [type]?criteria: deletes the one match; none is nothing to do, several 412."""

    resource_type: str
    criteria: Criteria
    if_match: int | None = None


Write = Create | ConditionalCreate | Update | ConditionalUpdate | Patch | Delete | ConditionalDelete


@dataclass(frozen=True, slots=True)
class Plan:
    """Writes applied together, in this order, in one transaction.

    `base_url`: the server's base URL, which makes absolute references
    (`[base]/Patient/1`) local, and which conditional matches search under.
    """

    writes: tuple[Write, ...]
    base_url: str = ""

    @classmethod
    def of(cls, *writes: Write, base_url: str = "") -> Plan:
        return cls(tuple(writes), base_url)


@dataclass(frozen=True, slots=True)
class MissingReference:
    """A literal reference of write number `write` that names no live resource."""

    write: int
    path: str  # the Reference element: Observation.subject, Observation.performer[1]
    reference: str  # as written: Patient/123, [base]/Patient/123/_history/2


def method_of(write: Write) -> str:
    """The HTTP method history records for a write."""
    return _METHODS[type(write)]


_METHODS: dict[type[Any], str] = {
    Create: "POST",
    ConditionalCreate: "POST",
    Update: "PUT",
    ConditionalUpdate: "PUT",
    Patch: "PATCH",
    Delete: "DELETE",
    ConditionalDelete: "DELETE",
}
