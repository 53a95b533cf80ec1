"""The message store as feeds use it: the store's SQL (`hub.store.messages`) bound to the
status table (`hub.ingest.status`), so every status change is one the table allows."""

from __future__ import annotations

from typing import Any

from hub.ingest.status import (
    ACTIVE,
    DEAD,
    DONE,
    FAILED,
    LIFECYCLE,
    OPEN,
    PENDING,
    PROCESSING,
    RECEIVED,
    STATUSES,
    WAITING,
)
from hub.store import messages as rows
from hub.store.messages import CONTENT_TYPE_MAX, SOURCE_MAX, Message, check_source, now

__all__ = [
    "ACTIVE",
    "CONTENT_TYPE_MAX",
    "DEAD",
    "DONE",
    "FAILED",
    "OPEN",
    "PENDING",
    "PROCESSING",
    "RECEIVED",
    "SOURCE_MAX",
    "STATUSES",
    "WAITING",
    "Message",
    "MessageStore",
    "check_source",
    "now",
]


class MessageStore(rows.MessageStore):
    def __init__(self, engine: Any) -> None:
        super().__init__(engine, LIFECYCLE)
