"""Processing one stored message: parse, map, validate, write — one transaction.

A plain function of a message id, idempotent: a message already done is
skipped, a redelivered one finds its row locked or done, and the resource
ids are deterministic, so a replay updates instead of duplicating. Tasks
(Celery or the embedded thread pool) only call `Pipeline.process`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from sqlalchemy import bindparam, delete, func, select, tuple_, update
from sqlalchemy.exc import DBAPIError

from hub.errors import Busy, Conflict, HubError, Invalid
from hub.fhir import validate
from hub.ingest.adapters import AdapterRegistry
from hub.ingest.mapping import Mapped, Mapper, Mapping_
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

    def next_in_order(self, message_id: int) -> int | None:
        """Once `message_id` is finished: the earliest open message from its source about the
        same subject, which may have waited for it (see `hub.ingest.dispatch.follow`)."""
        message = self.store.get(message_id)
        if message is None or message.status in OPEN:
            return None
        following = self.store.open_about(message, limit=1)
        return following[0] if following else None

    def next_in_order_many(self, finished: Sequence[int]) -> list[int]:
        """`next_in_order` for each subject of several finished messages, in one query."""
        return self.store.first_open_about(finished)

    def blocking(self, message_id: int) -> list[int]:
        """The earlier open messages about the same subject that `message_id` waits for."""
        message = self.store.get(message_id)
        return self.store.open_about(message, before=True) if message else []

    def process(self, message_id: int) -> Outcome:
        return self.process_many([message_id])[message_id]

    def process_many(self, message_ids: Sequence[int]) -> dict[int, Outcome]:
        """Process messages in id order, in one database transaction; the outcome of each.

        The outcomes are those of processing them one by one: a message about a subject
        with an earlier open message outside the batch waits (`DEFERRED`), and so do the
        batch's later ones about it; a message the mapping rejects fails alone. A
        transaction that fails (a lost race, a deadlock, the database) is tried again one
        message at a time, so that one message's trouble holds back no other.
        """
        outcomes = dict.fromkeys(message_ids, Outcome.SKIPPED)
        found = [m for m in self.store.get_many(sorted(outcomes)) if m.status in OPEN]
        blocked = self.store.open_before(found)
        ready, waiting = [], []
        for m in found:
            # An earlier message about its subject is open: so it is for the batch's later ones.
            if m.order_key and blocked.get((m.source, m.order_key), m.id) < m.id:
                waiting.append(m.id)
                outcomes[m.id] = Outcome.DEFERRED
            else:
                ready.append(m)
        self.store.wait_behind(waiting)
        attempts = self.store.note_attempts([m.id for m in ready])
        prepared: list[_Prepared] = []
        held = _Held()
        for m in ready:
            if m.id not in attempts:
                continue  # another worker finished it meanwhile: skipped
            if held.holds(m):
                outcomes[m.id] = Outcome.DEFERRED
                continue
            if attempts[m.id] > self.max_attempts:
                # The earlier attempts never finished: a worker died on it, or raised something
                # unexpected. Sending it again and again would not help.
                error = f"after {attempts[m.id] - 1} attempts: the processing never finished"
                self.store.set_status(m.id, DEAD, error)
                log.error("message %s is dead: %s", m.id, error)
                outcomes[m.id] = Outcome.DEAD
                continue
            try:
                adapter = self.adapters.get(m.adapter)
                mapped = adapter.map(adapter.parse(m.raw), self.mapper(m))
                for resource in mapped.resources:
                    validate(resource, max_depth=self.ctx.settings.max_resource_depth)
            except (Invalid, LookupError) as e:
                outcomes[m.id] = self._fail(m, e)
                continue
            except Exception as e:  # a bug in an adapter or a mapping: this message's alone
                log.exception("message %s could not be mapped", m.id)
                outcomes[m.id] = held.note(m, self._transient(m, attempts[m.id], e))
                continue
            prepared.append(_Prepared(m, attempts[m.id], mapped))
        if prepared:
            outcomes.update(self._commit(prepared, held))
        self.store.wait_behind(held.deferred, taken=True)
        return outcomes

    def _commit(self, batch: list[_Prepared], held: _Held) -> dict[int, Outcome]:
        try:
            with self.ctx.unit(None) as tx:
                return self._apply(tx, batch)
        except Exception as e:
            if len(batch) > 1:
                log.info("a batch of %s messages failed (%s); one at a time", len(batch), e)
                done: dict[int, Outcome] = {}
                for one in batch:
                    if held.holds(one.message):
                        done[one.message.id] = Outcome.DEFERRED
                    else:
                        done.update(self._commit([one], held))
                return done
            message = batch[0].message
            if isinstance(e, Invalid):
                return {message.id: self._fail(message, e)}
            if not isinstance(e, Busy | Conflict | DBAPIError):
                log.exception("message %s could not be written", message.id)
            return {message.id: held.note(message, self._transient(message, batch[0].attempts, e))}

    def _transient(self, message: Message, attempts: int, error: Exception) -> Outcome:
        """RETRY, or DEAD once the attempts are spent (the error is kept)."""
        text = f"{type(error).__name__}: {error}"
        if attempts >= self.max_attempts:
            self.store.set_status(message.id, DEAD, f"after {attempts} attempts: {text}")
            log.error("message %s is dead after %s attempts: %s", message.id, attempts, text)
            return Outcome.DEAD
        log.warning("message %s attempt %s failed, will retry: %s", message.id, attempts, text)
        return Outcome.RETRY

    def _apply(self, tx: Transaction, batch: list[_Prepared]) -> dict[int, Outcome]:
        outcomes: dict[int, Outcome] = {}
        claimed = self._claim(tx, [p.message.id for p in batch])
        keys = [
            key
            for p in batch
            for key in [
                *((r["resourceType"], r["id"]) for r in p.mapped.resources),
                ("Provenance", provenance_id(p.message)),
            ]
        ]
        tx.prefetch(keys)
        later = self._last_writers(tx, keys, min(p.message.id for p in batch))
        records = []
        for p in batch:
            if p.message.id not in claimed:
                outcomes[p.message.id] = Outcome.SKIPPED  # another run finished it
                continue
            message = replace(p.message, produced=claimed[message_id := p.message.id])
            written, kept = [], []
            for resource, lines in zip(p.mapped.resources, p.mapped.lineage, strict=True):
                if later.get((resource["resourceType"], resource["id"]), 0) > message_id:
                    # A later message wrote this resource already: this one's data is older.
                    kept += self._produced_before(tx, message, resource)
                else:
                    written.append(Written(self._write(tx, resource), lines))
            targets = [w.version for w in written] + kept
            provenance = self._provenance(tx, message, targets) if targets else None
            records.append((message, written, [*targets, *filter(None, [provenance])]))
            outcomes[message_id] = Outcome.DONE
        self._record(tx, records)
        return outcomes

    def _fail(self, message: Message, error: Exception) -> Outcome:
        field = getattr(error, "field", None)
        try:
            label = self.adapters.get(message.adapter).field_label
        except LookupError:
            label = "field"
        where = ", ".join(p for p in (message.origin, f"{label} {field}" if field else "") if p)
        self.store.set_status(message.id, FAILED, f"{where}: {error}" if where else str(error))
        return Outcome.FAILED

    def _claim(self, tx: Transaction, message_ids: list[int]) -> dict[int, list[str]]:
        """Lock the messages' rows for this transaction; of those still open, what each
        produced before (empty unless it is a replay)."""
        rows = tx.lock_row(
            select(messages.c.id, messages.c.status, messages.c.produced)
            .where(messages.c.id.in_(message_ids))
            .order_by(messages.c.id)
        )
        return {int(r[0]): list(json.loads(r[2])) if r[2] else [] for r in rows if r[1] in OPEN}

    def _last_writers(
        self, tx: Transaction, keys: list[tuple[str, str]], after: int
    ) -> dict[tuple[str, str], int]:
        """The last message after `after` that wrote each of these resources (replays)."""
        rows = tx.rows(
            select(lineage.c.res_type, lineage.c.res_id, func.max(lineage.c.message_id))
            .where(
                lineage.c.message_id > after,
                tuple_(lineage.c.res_type, lineage.c.res_id).in_(list(dict.fromkeys(keys))),
            )
            .group_by(lineage.c.res_type, lineage.c.res_id)
        )
        return {(r[0], r[1]): int(r[2]) for r in rows}

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
            "id": provenance_id(message),
            "target": [{"reference": _reference(v)} for v in targets],
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
        self, tx: Transaction, records: list[tuple[Message, list[Written], list[Version]]]
    ) -> None:
        """Lineage rows and `done` for the messages processed, a statement each for all."""
        for message, written, _ in records:
            # A replay records a version's lineage again; older ones stay. A message never
            # done before (nothing produced) has no lineage rows to replace.
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
            for message, written, _ in records
            for w in written
            for element, field in w.lineage
        ]
        if rows:
            tx.add_rows(lineage, rows)
        at = now()
        done = [
            {
                "message": message.id,
                "produced": json.dumps([_reference(v) for v in produced]),
            }
            for message, _, produced in records
        ]
        if done:
            tx.execute(
                update(messages)
                .where(messages.c.id == bindparam("message"))
                .values(status=DONE, error=None, produced=bindparam("produced"), updated_at=at),
                done,
            )


def _reference(v: Version) -> str:
    return f"{v.resource_type}/{v.resource_id}/_history/{v.version_id}"


def provenance_id(message: Message) -> str:
    """The id of the Provenance of a message's writes: one per message, stable across replays."""
    return f"message-{message.id}"


class _Held:
    """Subjects (source, order key) with a message this call leaves open to retry, and the
    later messages about them it held back: those wait for it, as if it were still ahead."""

    def __init__(self) -> None:
        self.subjects: set[tuple[str, str]] = set()
        self.deferred: list[int] = []

    def holds(self, message: Message) -> bool:
        if message.order_key and (message.source, message.order_key) in self.subjects:
            self.deferred.append(message.id)
            return True
        return False

    def note(self, message: Message, outcome: Outcome) -> Outcome:
        if outcome == Outcome.RETRY and message.order_key:
            self.subjects.add((message.source, message.order_key))
        return outcome


@dataclass(frozen=True)
class _Prepared:
    """A message parsed, mapped and validated, ready to be written."""

    message: Message
    attempts: int
    mapped: Mapped
