"""A feed message as a plan of writes: what `prepare` makes and `reconcile` may change.

Ingestion is three steps (docs/ingestion.md, "Prepare, reconcile, commit"):
`prepare` parses and maps a message into a `MessagePlan` (ids worked out from
business keys, nothing written); `reconcile` (`hub.ingest.reconcile`) takes the
plan and a read-only view of the current state and answers the plan to write; the commit turns it
into the executor's writes, batch by batch. Plans are values: a step never
changes the plan it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

from hub.fhir.references import Found, local_references


@dataclass(frozen=True)
class Write:
    """One resource of a message, as mapped: its content (with its id), which source field
    filled which element, and the reference elements that must have arrived first."""

    resource: dict[str, Any]
    lineage: tuple[tuple[str, str], ...] = ()
    awaits: tuple[str, ...] = ()  # element paths, e.g. "Observation.subject"
    # The mapped elements go over the stored content instead of replacing it (the Patient
    # a merge retires: only `active` and `link` are the message's).
    overlay: bool = False
    # Top-level elements the message does not own: a list keeps its stored items (the
    # write's are added), a single value stays when the write has none (`Patient.link`).
    keep: tuple[str, ...] = ()
    # The version the write must replace (412 otherwise): a resource rewritten from what
    # reconcile read, so that a concurrent change is not overwritten.
    if_match: int | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (str(self.resource["resourceType"]), str(self.resource["id"]))

    @cached_property
    def references(self) -> tuple[Found, ...]:
        """The resource's local references, walked once: the commit asks which have arrived,
        and the executor checks and stores the same ones."""
        return tuple(local_references(self.resource))


@dataclass(frozen=True)
class Merge:
    """A resource of the message retired into another (HL7 v2 A40: the Patient MRG-1 names
    into the one PID-3 names): what references the retired one is moved to the survivor."""

    resource_type: str
    merged: str  # id
    survivor: str  # id
    source_field: str = ""  # the v2 place that named the merged one, for lineage


@dataclass(frozen=True)
class MessagePlan:
    """What one message becomes: its writes, in order, and where they came from."""

    writes: tuple[Write, ...]
    order_key: str | None
    mapping: str
    mapping_version: str
    merges: tuple[Merge, ...] = ()

    @property
    def alone(self) -> bool:
        """Whether the message is reconciled and written after the messages before it in its
        batch are written, and before those after it: a merge moves what the earlier ones
        wrote, and the later ones keep what it wrote (`Write.keep`)."""
        return bool(self.merges)

    def keys(self) -> list[tuple[str, str]]:
        return [w.key for w in self.writes]


class State(Protocol):
    """The current state a reconciliation may consult: read-only."""

    def current(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """The current content of a resource, or None (never written, or deleted)."""
        ...

    def version(self, resource_type: str, resource_id: str) -> int | None:
        """The current version id of a live resource, or None."""
        ...

    def referrers(self, resource_type: str, resource_id: str) -> list[tuple[str, str]]:
        """The live resources that reference this one (type, id), in a stable order."""
        ...


@dataclass(frozen=True)
class MissingReference:
    """A reference of a plan's write whose target does not exist."""

    index: int  # of the write in the plan
    path: str  # e.g. "Observation.subject"
    reference: str  # e.g. "Patient/123"

    @property
    def target(self) -> tuple[str, str]:
        resource_type, _, resource_id = self.reference.partition("/")
        return (resource_type, resource_id)

    def reason(self) -> str:
        return f"{self.path}: {self.reference} has not arrived"


def awaited(plan: MessagePlan, missing: list[MissingReference]) -> list[MissingReference]:
    """Of the plan's missing references, those its mapping waits for (elements marked
    `wait`); the others are written as they are."""
    return [m for m in missing if m.path in plan.writes[m.index].awaits]
