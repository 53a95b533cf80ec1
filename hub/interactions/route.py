"""One entry of the routing table: which requests an interaction answers, and how the
CapabilityStatement names it.

`hub.interactions.routes` holds the table and dispatches by it; the
CapabilityStatement (`hub.interactions.capabilities`) is generated from the same
entries, so what is served and what is stated cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from hub.interactions.context import Context, Request, Result
from hub.store.repository import Transaction

Interaction = Callable[[Context, Request, Transaction | None], Result]
Level = Literal["system", "type", "instance"]

# The operation of a compartment search: `Patient/1/Observation` (or `Patient/1/*`).
COMPARTMENT = "compartment"


@dataclass(frozen=True)
class Route:
    """Requests at `level` with `operation` (None: the plain interaction; "_history",
    "_search", "metadata", COMPARTMENT or a "$name") and one of `methods`."""

    level: Level
    methods: tuple[str, ...]
    operation: str | None
    handler: Interaction
    # The CapabilityStatement interaction code (rest.interaction or resource.interaction).
    code: str | None = None
    # For an extended operation ($name): the canonical URL of its OperationDefinition.
    definition: str | None = None
    # The resource types it applies to (None: every type); type and instance levels only.
    types: tuple[str, ...] | None = None
    # Instance history: True only with a version id (vread), False only without one.
    versioned: bool | None = None
    # Whether it takes an id at the system level ($reindex/{job}): None either way.
    takes_id: bool | None = None
    # Only inside a transaction (a POST to an id the transaction assigned).
    in_transaction: bool = False
    # Type level only with search criteria (conditional update, patch and delete).
    needs_criteria: bool = False

    @property
    def name(self) -> str | None:
        """The operation's name as the CapabilityStatement lists it (`everything`)."""
        if self.operation is None or not self.operation.startswith("$"):
            return None
        return self.operation[1:]

    def applies_to(self, resource_type: str) -> bool:
        return self.types is None or resource_type in self.types
