"""Processing one stored message: parse, map, validate, write — one transaction.

A plain function of a message id, idempotent: a message already done is
skipped, a redelivered one finds its row locked or done, and the resource
ids are deterministic, so a replay updates instead of duplicating. Tasks
(Celery or the embedded thread pool) only call `Pipeline.process`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import DBAPIError

from hub.errors import Busy, Conflict, HubError, Invalid
from hub.fhir import validate
from hub.ingest.adapters import AdapterRegistry
from hub.ingest.mapping import Mapper, Mapping_
from hub.ingest.messages import DEAD, DONE, FAILED, OPEN, Message, MessageStore, now
from hub.interactions.context import Context
from hub.interactions.writes import instant, save
from hub.store.repository import Transaction, Version
from hub.store.schema import lineage, messages

log = logging.getLogger("hub.ingest")
MESSAGE_SYSTEM = "urn:fhir-hub:message"


class Outcome(StrEnum):
    DONE = "done"
    FAILED = "failed"  # the input is wrong: kept, not retried
    RETRY = "retry"  # a transient error: try again later
    DEAD = "dead"  # transient errors outlasted the attempts
    DEFERRED = "deferred"  # an earlier message about the same subject is still open
    SKIPPED = "skipped"  # already finished, or unknown


@dataclass(frozen=True)
class Written:
    version: Version
    lineage: list[tuple[str, str]]


class Pipeline:
    def __init__(
        self,
        ctx: Context,
        store: MessageStore,
        adapters: AdapterRegistry,
        mappings: Mapping[str, Mapping_],
        max_attempts: int = 5,
    ) -> None:
        self.ctx = ctx
        self.store = store
        self.adapters = adapters
        self.mappings = mappings
        self.max_attempts = max_attempts

    def mapper(self, message: Message) -> Mapper:
        if message.mapping is None or message.mapping not in self.mappings:
            raise Invalid(f"mapping '{message.mapping}' is not known")
        return Mapper(self.mappings[message.mapping], source=message.source)

    def order_key(self, adapter: str, mapping: str | None, raw: bytes, source: str) -> str | None:
        """The subject a unit is about (e.g. the patient), for in-order application."""
        if mapping is None or mapping not in self.mappings:
            return None
        try:
            a = self.adapters.get(adapter)
            return a.map(a.parse(raw), Mapper(self.mappings[mapping], source)).order_key
        except HubError:
            return None

    def _earlier_open(self, message: Message) -> bool:
        return bool(self.store.open_about(message, before=True, limit=1))

    def next_in_order(self, message_id: int) -> int | None:
        """Once `message_id` is finished: the earliest open message from its source about the
        same subject, which may have waited for it (see `hub.ingest.dispatch.follow`)."""
        message = self.store.get(message_id)
        if message is None or message.status in OPEN:
            return None
        following = self.store.open_about(message, limit=1)
        return following[0] if following else None

    def blocking(self, message_id: int) -> list[int]:
        """The earlier open messages about the same subject that `message_id` waits for."""
        message = self.store.get(message_id)
        return self.store.open_about(message, before=True) if message else []

    def process(self, message_id: int) -> Outcome:
        message = self.store.get(message_id)
        if message is None or message.status not in OPEN:
            return Outcome.SKIPPED
        if self._earlier_open(message):
            self.store.wait_behind(message_id)
            return Outcome.DEFERRED
        attempts = self.store.note_attempt(message_id)
        if attempts > self.max_attempts:
            # The earlier attempts never finished: a worker died on it, or raised something
            # unexpected. Sending it again and again would not help.
            error = f"after {attempts - 1} attempts: the processing never finished"
            self.store.set_status(message_id, DEAD, error)
            log.error("message %s is dead: %s", message_id, error)
            return Outcome.DEAD
        try:
            adapter = self.adapters.get(message.adapter)
            record = adapter.parse(message.raw)
            mapped = adapter.map(record, self.mapper(message))
            for resource in mapped.resources:
                validate(resource)
        except (Invalid, LookupError) as e:
            return self._fail(message, e)
        try:
            with self.ctx.repo.transaction() as tx:
                produced = self._claim(tx, message_id)
                if produced is None:
                    return Outcome.SKIPPED
                message = replace(message, produced=produced)  # as it stands under the lock
                written, kept = [], []
                for resource, lines in zip(mapped.resources, mapped.lineage, strict=True):
                    if self._superseded(tx, message, resource):
                        kept += self._produced_before(tx, message, resource)
                    else:
                        written.append(Written(self._write(tx, resource), lines))
                targets = [w.version for w in written] + kept
                provenance = self._provenance(tx, message, targets) if targets else None
                self._record(tx, message, written, [*targets, *filter(None, [provenance])])
            return Outcome.DONE
        except Invalid as e:
            return self._fail(message, e)
        except (Busy, Conflict, DBAPIError) as e:
            error = f"{type(e).__name__}: {e}"
            if attempts >= self.max_attempts:
                self.store.set_status(message_id, "dead", f"after {attempts} attempts: {error}")
                log.error("message %s is dead after %s attempts: %s", message_id, attempts, error)
                return Outcome.DEAD
            log.warning("message %s attempt %s failed, will retry: %s", message_id, attempts, error)
            return Outcome.RETRY

    def _fail(self, message: Message, error: Exception) -> Outcome:
        field = getattr(error, "field", None)
        try:
            label = self.adapters.get(message.adapter).field_label
        except LookupError:
            label = "field"
        where = ", ".join(p for p in (message.origin, f"{label} {field}" if field else "") if p)
        self.store.set_status(message.id, FAILED, f"{where}: {error}" if where else str(error))
        return Outcome.FAILED

    def _claim(self, tx: Transaction, message_id: int) -> list[str] | None:
        """Lock the message row for this transaction; None when another run finished it, else
        what it produced before (empty unless it is a replay)."""
        rows = tx.lock_row(
            select(messages.c.status, messages.c.produced).where(messages.c.id == message_id)
        )
        if not rows or rows[0][0] not in OPEN:
            return None
        return list(json.loads(rows[0][1])) if rows[0][1] else []

    def _superseded(self, tx: Transaction, message: Message, resource: dict[str, Any]) -> bool:
        """A later message wrote this resource already: this one's data is older (a replay)."""
        return bool(
            tx.rows(
                select(lineage.c.message_id)
                .where(
                    lineage.c.res_type == resource["resourceType"],
                    lineage.c.res_id == resource["id"],
                    lineage.c.message_id > message.id,
                )
                .limit(1)
            )
        )

    def _produced_before(
        self, tx: Transaction, message: Message, resource: dict[str, Any]
    ) -> list[Version]:
        """The last version of a superseded resource this message wrote, if it wrote one."""
        rows = tx.rows(
            select(func.max(lineage.c.version_id)).where(
                lineage.c.res_type == resource["resourceType"],
                lineage.c.res_id == resource["id"],
                lineage.c.message_id == message.id,
            )
        )
        version_id = rows[0][0] if rows else None
        if version_id is None:
            return []
        version = tx.version(resource["resourceType"], resource["id"], int(version_id))
        return [version] if version is not None else []

    def _write(self, tx: Transaction, resource: dict[str, Any]) -> Version:
        result = save(
            self.ctx, tx, resource["resourceType"], resource["id"], resource, method="PUT"
        )
        assert result.version is not None
        return result.version

    def _provenance(self, tx: Transaction, message: Message, targets: list[Version]) -> Version:
        provenance: dict[str, Any] = {
            "resourceType": "Provenance",
            "id": f"message-{message.id}",
            "target": [
                {"reference": f"{v.resource_type}/{v.resource_id}/_history/{v.version_id}"}
                for v in targets
            ],
            "recorded": instant(now()),
            "activity": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                        "code": "UPDATE",
                    }
                ]
            },
            "agent": [
                {
                    "type": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                "code": "author",
                            }
                        ]
                    },
                    "who": {
                        "identifier": {"system": "urn:fhir-hub:source", "value": message.source},
                        "display": message.source,
                    },
                }
            ],
            "entity": [
                {
                    "role": "source",
                    "what": {
                        "identifier": {"system": MESSAGE_SYSTEM, "value": str(message.id)},
                        "display": f"{message.adapter} message {message.external_id}"
                        + (f" ({message.origin})" if message.origin else ""),
                    },
                }
            ],
        }
        # Only a message that was done before (a replay) can have its Provenance already.
        current = tx.current("Provenance", provenance["id"]) if message.produced else None
        if current is not None and current.content is not None:
            stored = json.loads(current.content)
            if all(stored.get(k) == v for k, v in provenance.items() if k != "recorded"):
                return current  # a replay that changed nothing: no new version
        return self._write(tx, provenance)

    def _record(
        self,
        tx: Transaction,
        message: Message,
        written: list[Written],
        produced_versions: list[Version],
    ) -> None:
        # A replay records a version's lineage again; older ones stay. A message never done
        # before (nothing produced) has no lineage rows to replace.
        for w in written if message.produced else ():
            v = w.version
            tx.execute(
                delete(lineage).where(
                    lineage.c.message_id == message.id,
                    lineage.c.res_type == v.resource_type,
                    lineage.c.res_id == v.resource_id,
                    lineage.c.version_id == v.version_id,
                )
            )
        rows = [
            {
                "res_type": w.version.resource_type,
                "res_id": w.version.resource_id,
                "version_id": w.version.version_id,
                "element": element,
                "source_field": field,
                "message_id": message.id,
            }
            for w in written
            for element, field in w.lineage
        ]
        if rows:
            conn = getattr(tx, "conn", None)
            if conn is not None:  # the SQL store: an executemany, its statement compiled once
                conn.execute(insert(lineage), rows)
            else:
                tx.execute(insert(lineage).values(rows))
        produced = [
            f"{v.resource_type}/{v.resource_id}/_history/{v.version_id}" for v in produced_versions
        ]
        tx.execute(
            update(messages)
            .where(messages.c.id == message.id)
            .values(status=DONE, error=None, produced=json.dumps(produced), updated_at=now())
        )
