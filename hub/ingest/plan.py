"""A feed message as a plan of writes: what `prepare` makes and `reconcile` may change.

Ingestion is three steps (docs/ingestion.md, "Prepare, reconcile, commit"):
`prepare` parses and maps a message into a `MessagePlan` (ids worked out from
business keys, nothing written); `reconcile` takes the plan and a read-only
view of the current state and answers the plan to write; the commit turns it
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

    @property
    def key(self) -> tuple[str, str]:
        return (str(self.resource["resourceType"]), str(self.resource["id"]))

    @cached_property
    def references(self) -> tuple[Found, ...]:
        """The resource's local references, walked once: the commit asks which have arrived,
        and the executor checks and stores the same ones."""
        return tuple(local_references(self.resource))


@dataclass(frozen=True)
class MessagePlan:
    """What one message becomes: its writes, in order, and where they came from."""

    writes: tuple[Write, ...]
    order_key: str | None
    mapping: str
    mapping_version: str

    def keys(self) -> list[tuple[str, str]]:
        return [w.key for w in self.writes]


class State(Protocol):
    """The current state a reconciliation may consult: read-only."""

    def current(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """The current content of a resource, or None (never written, or deleted)."""
        ...


def reconcile(plan: MessagePlan, state: State) -> MessagePlan:
    """The plan to write, given what is stored now.

    The place for patient matching (a new Patient that is an existing one under another
    identifier becomes an update of that one, and the plan's references follow),
    survivorship (which source's value of an element wins) and conflict detection (a change
    that contradicts a newer one from another source is held for review). None of these is
    in force yet: the plan goes through as prepared.
    """
    del state  # consulted once the rules above are in force
    return plan


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
