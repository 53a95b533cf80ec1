"""A stored message's status, and every way it may change: one table.

The message store changes a status only through `move` (for one known status)
or `sources` (the statuses an UPDATE may move for an event, `WHERE status IN ...`):
a transition the table lacks raises `IllegalTransition`, and a row found in
another status (a worker moved it meanwhile) is left as it is. docs/ingestion.md
shows the same table as a diagram.
"""

from __future__ import annotations

from enum import StrEnum
from functools import cache

RECEIVED, PROCESSING, DONE, FAILED, DEAD = "received", "processing", "done", "failed", "dead"
WAITING = "waiting"  # an earlier message about its subject is open: its worker goes on with it
PENDING = "pending"  # it refers to a resource that has not arrived: it goes on when it does
STATUSES = (RECEIVED, WAITING, PENDING, PROCESSING, DONE, FAILED, DEAD)
# Being worked on: a later message about the same subject waits behind these. A pending
# message does not hold its subject's line: the feed's rule (a later message wins, through
# lineage) keeps its older data from overwriting newer when it goes ahead, and a line held
# by it could wait on itself (a Patient row of the same source and key, behind an
# Observation row waiting for that Patient).
OPEN = (RECEIVED, WAITING, PROCESSING)
# Open and being worked on, or about to be: what `hub ingest --wait` waits for. A pending
# message may wait an hour for another feed; the command reports it rather than waiting.
ACTIVE = (RECEIVED, WAITING, PROCESSING)


class Event(StrEnum):
    RECEIVE = "receive"  # committed raw
    REFUSE = "refuse"  # committed raw, refused at receipt (an HL7 v2 message answered AE/AR)
    TAKE = "take"  # a worker takes it (an attempt)
    WAIT = "wait"  # an earlier message about its subject is open
    AWAIT_REFERENCE = "await-reference"  # a resource it refers to has not arrived
    ARRIVED = "arrived"  # the resource it waited for was written
    WRITE = "write"  # written, whole
    REJECT = "reject"  # the input is wrong
    EXPIRE = "expire"  # waited for a reference longer than HUB_INGEST_REFERENCE_WAIT_SECONDS
    GIVE_UP = "give-up"  # transient errors outlasted the attempts
    RETRY = "retry"  # an operator puts a failed or dead message back
    REPLAY = "replay"  # an operator runs a finished message again


NEW = None  # the state before a message is stored

TRANSITIONS: dict[tuple[str | None, Event], str] = {
    (NEW, Event.RECEIVE): RECEIVED,
    (NEW, Event.REFUSE): FAILED,
    (RECEIVED, Event.TAKE): PROCESSING,
    (WAITING, Event.TAKE): PROCESSING,
    (PENDING, Event.TAKE): PROCESSING,
    (PROCESSING, Event.TAKE): PROCESSING,  # its worker died; another takes it
    (RECEIVED, Event.WAIT): WAITING,
    (PROCESSING, Event.WAIT): WAITING,
    (PROCESSING, Event.AWAIT_REFERENCE): PENDING,
    (PENDING, Event.ARRIVED): RECEIVED,
    (PROCESSING, Event.WRITE): DONE,
    (PROCESSING, Event.REJECT): FAILED,
    (PENDING, Event.EXPIRE): FAILED,
    (PROCESSING, Event.GIVE_UP): DEAD,
    (FAILED, Event.RETRY): RECEIVED,
    (DEAD, Event.RETRY): RECEIVED,
    (DONE, Event.REPLAY): RECEIVED,
    (FAILED, Event.REPLAY): RECEIVED,
    (DEAD, Event.REPLAY): RECEIVED,
}


class IllegalTransition(ValueError):
    def __init__(self, status: str | None, event: Event) -> None:
        super().__init__(f"a {status or 'new'} message cannot {event.value}")
        self.status, self.event = status, event


def move(status: str | None, event: Event) -> str:
    """The status after `event`; `IllegalTransition` when the table has no such move."""
    try:
        return TRANSITIONS[(status, event)]
    except KeyError:
        raise IllegalTransition(status, event) from None


# Answered from a fixed table: cached, as the store asks on every commit.
@cache
def sources(event: str, among: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The statuses `event` moves a message from (narrowed to `among`); an UPDATE for the
    event names them, so a message found in another status stays as it is."""
    event = Event(event)
    found = tuple(
        s
        for (s, e) in TRANSITIONS
        if e == event and s is not None and (among is None or s in among)
    )
    if not found:
        raise IllegalTransition(among[0] if among else None, event)
    return found


@cache
def target(event: str) -> str:
    """The one status `event` leads to (every event leads to one)."""
    (to,) = {to for (_, e), to in TRANSITIONS.items() if e == Event(event)}
    return to


class Lifecycle:
    """The table as the message store uses it (`hub.store.messages.Lifecycle`)."""

    open: tuple[str, ...] = OPEN

    def sources(self, event: str, among: tuple[str, ...] | None = None) -> tuple[str, ...]:
        return sources(event, among)

    def target(self, event: str) -> str:
        return target(event)


LIFECYCLE = Lifecycle()
