"""Processing stored messages: prepare, reconcile, commit — one transaction a batch.

`prepare` parses and maps a message into a plan (`hub.ingest.plan`), with no
writes; `reconcile` turns a plan and the current state into the plan to write;
the commit checks the plan's references (a message waiting for a resource that
has not arrived is left `pending`), keeps the feed's rule that a later message
wins, and writes. A plain function of message ids, idempotent: a message
already done is skipped, a redelivered one finds its row locked or done, and
the resource ids are deterministic, so a replay updates instead of
duplicating. Tasks (Celery or the embedded thread pool) only call
`Pipeline.process_many`.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from enum import StrEnum
from typing import Any

import orjson

from hub.errors import Busy, Conflict, HubError, Invalid
from hub.fhir import validate
from hub.fhir.references import Found
from hub.ingest import status
from hub.ingest.adapters import AdapterRegistry
from hub.ingest.mapping import Mapper, Mapping_
from hub.ingest.messages import OPEN, Message, MessageStore, now
from hub.ingest.plan import Merge, MessagePlan, MissingReference, Write, awaited
from hub.ingest.reconcile import MOST_MOVED, reconcile
from hub.interactions import executor
from hub.interactions.context import Context
from hub.interactions.executor import execute
from hub.interactions.plan import Plan, Update
from hub.interactions.writes import instant
from hub.store import lineage
from hub.store.errors import DatabaseError as _DatabaseError
from hub.store.repository import Transaction, Version

log = logging.getLogger("hub.ingest")
MESSAGE_SYSTEM = "urn:fhir-hub:message"
# Distinct resource contents a pipeline remembers as valid (see `Pipeline._validate`).
VALIDATED_KEPT = 4096


class Outcome(StrEnum):
    DONE = "done"
    FAILED = "failed"  # the input is wrong: kept, not retried
    RETRY = "retry"  # a transient error: try again later
    DEAD = "dead"  # transient errors outlasted the attempts
    DEFERRED = "deferred"  # an earlier message about the same subject is still open
    PENDING = "pending"  # a resource it refers to has not arrived: it goes on when it does
    SKIPPED = "skipped"  # already finished, or unknown


class Outcomes(dict[int, Outcome]):
    """The outcome of each message of a batch; `released`: pending messages the batch wrote
    what they waited for, now `received` again, to be sent (in id order)."""

    def __init__(self, outcomes: Mapping[int, Outcome], released: Sequence[int] = ()) -> None:
        super().__init__(outcomes)
        self.released = list(released)


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
        reference_wait: float = 3600.0,
    ) -> None:
        self.ctx = ctx
        self.store = store
        self.adapters = adapters
        self.mappings = mappings
        self.max_attempts = max_attempts
        self.reference_wait = timedelta(seconds=reference_wait)
        # Content validated before, by its JSON bytes: the same Practitioner, Location and
        # Organization come with every HL7 v2 message of a sender, and validation through
        # the models is the dearest step of prepare. Bounded: the oldest goes first.
        self._valid: OrderedDict[bytes, None] = OrderedDict()
        self._valid_lock = threading.Lock()  # the embedded mode's threads share a pipeline

    def mapper(self, message: Message) -> Mapper:
        if message.mapping is None or message.mapping not in self.mappings:
            raise Invalid(f"mapping '{message.mapping}' is not known")
        return Mapper(self.mappings[message.mapping], source=message.source)

    def order_key(self, adapter: str, mapping: str | None, raw: bytes, source: str) -> str | None:
        """The subject a unit is about (e.g. the patient), for in-order application: the
        mapping's `key` fields of the parsed unit, as `prepare` finds them. Only the parse is
        needed, not the mapping, so the receiver keeps it without mapping the unit; a unit
        that does not parse has none, and fails when it is prepared."""
        if mapping is None:
            # An adapter that chooses the mapping per message (HL7 v2: by MSH-9) knows the
            # subject itself.
            try:
                keyed = getattr(self.adapters.get(adapter), "order_key", None)
            except LookupError:
                return None
            return keyed(raw, source) if keyed is not None else None
        if mapping not in self.mappings:
            return None
        try:
            return Mapper(self.mappings[mapping], source).order_key(
                self.adapters.get(adapter).parse(raw)
            )
        except HubError:
            return None

    def prepare(self, message: Message) -> MessagePlan:
        """Parse, map and validate a message into its plan of writes; nothing is written.
        `Invalid` (or `LookupError`: an unknown adapter) when the input is wrong."""
        adapter = self.adapters.get(message.adapter)
        chooser = getattr(adapter, "mapper_for", None)
        if message.mapping is None and chooser is not None:
            # The adapter chooses the mapping per message (HL7 v2: by MSH-9 and sender).
            record = adapter.parse(message.raw)
            mapper = chooser(record, message.source)
            mapped = adapter.map(record, mapper)
        else:
            mapper = self.mapper(message)
            mapped = adapter.map(adapter.parse(message.raw), mapper)
        count = len(mapped.resources)
        awaits = mapped.awaits or [[] for _ in range(count)]  # an adapter's own `Mapped`
        overlay = mapped.overlay or [False] * count
        keep = mapped.keep or [()] * count
        for resource in mapped.resources:
            self._validate(resource)
        return MessagePlan(
            writes=tuple(
                Write(resource, tuple(lines), tuple(waits), over, tuple(kept))
                for resource, lines, waits, over, kept in zip(
                    mapped.resources, mapped.lineage, awaits, overlay, keep, strict=True
                )
            ),
            order_key=mapped.order_key,
            mapping=mapper.mapping.name,
            mapping_version=mapper.mapping.version,
            merges=tuple(Merge(*merge) for merge in mapped.merges),
        )

    def _validate(self, resource: dict[str, Any]) -> None:
        try:
            key = orjson.dumps(resource)
        except TypeError:  # a value JSON has no type for (a Decimal): validated every time
            validate(resource, max_depth=self.ctx.settings.max_resource_depth)
            return
        with self._valid_lock:
            if key in self._valid:
                self._valid.move_to_end(key)
                return
        validate(resource, max_depth=self.ctx.settings.max_resource_depth)
        with self._valid_lock:
            self._valid[key] = None
            if len(self._valid) > VALIDATED_KEPT:
                self._valid.popitem(last=False)

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

    def pending(self, message_ids: Sequence[int]) -> set[int]:
        """Those of these messages that wait for a reference."""
        return set(self.store.open_ids(message_ids, statuses=(status.PENDING,)))

    def process(self, message_id: int) -> Outcome:
        return self.process_many([message_id])[message_id]

    def process_many(self, message_ids: Sequence[int]) -> Outcomes:
        """Process messages in id order, in one database transaction; the outcome of each.

        The outcomes are those of processing them one by one: a message about a subject
        with an earlier open message outside the batch waits (`DEFERRED`), and so do the
        batch's later ones about it; a message the mapping rejects fails alone. A
        transaction that fails (a lost race, a deadlock, the database) is tried again one
        message at a time, so that one message's trouble holds back no other.
        """
        outcomes = dict.fromkeys(message_ids, Outcome.SKIPPED)
        takeable = status.sources(status.Event.TAKE)
        found = [m for m in self.store.get_many(sorted(outcomes)) if m.status in takeable]
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
        ready = [replace(m, status=status.move(m.status, status.Event.TAKE)) for m in ready]
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
                self.store.set_status(m.id, status.Event.GIVE_UP, error)
                log.error("message %s is dead: %s", m.id, error)
                outcomes[m.id] = Outcome.DEAD
                continue
            try:
                plan = self.prepare(m)
            except (Invalid, LookupError) as e:
                outcomes[m.id] = self._fail(m, e)
                continue
            except Exception as e:  # a bug in an adapter or a mapping: this message's alone
                log.exception("message %s could not be mapped", m.id)
                outcomes[m.id] = held.note(m, self._transient(m, attempts[m.id], e))
                continue
            prepared.append(_Prepared(m, attempts[m.id], plan))
        released: list[int] = []
        if prepared:
            committed = self._commit(prepared, held)
            outcomes.update(committed)
            released = committed.released
        self.store.wait_behind(held.deferred, taken=True)
        return Outcomes(outcomes, released)

    def _commit(self, batch: list[_Prepared], held: _Held) -> Outcomes:
        try:
            with self.ctx.unit(None) as tx:
                return self._apply_in_turn(tx, batch)
        except Exception as e:
            if len(batch) > 1:
                log.info("a batch of %s messages failed (%s); one at a time", len(batch), e)
                done = Outcomes({})
                for one in batch:
                    if held.holds(one.message):
                        done[one.message.id] = Outcome.DEFERRED
                    else:
                        alone = self._commit([one], held)
                        done.update(alone)
                        done.released += alone.released
                return done
            message = batch[0].message
            if isinstance(e, Invalid):
                return Outcomes({message.id: self._fail(message, e)})
            if not isinstance(e, Busy | Conflict | _DatabaseError):
                log.exception("message %s could not be written", message.id)
            outcome = self._transient(message, batch[0].attempts, e)
            return Outcomes({message.id: held.note(message, outcome)})

    def _transient(self, message: Message, attempts: int, error: Exception) -> Outcome:
        """RETRY, or DEAD once the attempts are spent (the error is kept)."""
        text = f"{type(error).__name__}: {error}"
        if attempts >= self.max_attempts:
            self.store.set_status(
                message.id, status.Event.GIVE_UP, f"after {attempts} attempts: {text}"
            )
            log.error("message %s is dead after %s attempts: %s", message.id, attempts, text)
            return Outcome.DEAD
        log.warning("message %s attempt %s failed, will retry: %s", message.id, attempts, text)
        return Outcome.RETRY

    def _apply_in_turn(self, tx: Transaction, batch: list[_Prepared]) -> Outcomes:
        """The batch in runs, each written before the next is reconciled: a message whose plan
        is `alone` (a merge) is a run of its own, so that it moves what the earlier messages
        wrote and the later ones see what it wrote. Mostly one run."""
        runs: list[list[_Prepared]] = [[]]
        for p in batch:
            if p.plan.alone:
                runs += [[p], []]
            else:
                runs[-1].append(p)
        done = Outcomes({})
        for run in (r for r in runs if r):
            applied = self._apply(tx, run)
            done.update(applied)
            done.released += applied.released
        return done

    def _apply(self, tx: Transaction, batch: list[_Prepared]) -> Outcomes:
        """The batch as one plan of writes: one question for its references, one execution
        for its resources and one for their Provenances, whatever its size."""
        outcomes: dict[int, Outcome] = {}
        claimed = self.store.claim(tx, [p.message.id for p in batch])
        keys = [
            key for p in batch for key in [*p.plan.keys(), ("Provenance", provenance_id(p.message))]
        ]
        tx.prefetch(keys)
        later = lineage.last_writers(tx, keys, min(p.message.id for p in batch))
        state = _TxState(tx)
        ready: list[tuple[Message, MessagePlan]] = []
        for p in batch:
            if p.message.id not in claimed:
                outcomes[p.message.id] = Outcome.SKIPPED  # another run finished it
                continue
            message = replace(p.message, produced=claimed[p.message.id])
            ready.append((message, reconcile(p.plan, state)))
        for message in self._await_references(tx, ready):
            outcomes[message.id] = Outcome.PENDING
        ready = [(m, plan) for m, plan in ready if m.id not in outcomes]
        # The feed's rule first: a resource a later message wrote already is not written again.
        chosen = [(m, plan, *self._current_writes(tx, m, plan, later)) for m, plan in ready]
        results = self._execute(
            tx,
            [w.resource for _, _, current, _ in chosen for w in current],
            [w.references for _, _, current, _ in chosen for w in current],
            [w.if_match for _, _, current, _ in chosen for w in current],
        )
        records: list[tuple[Message, MessagePlan, list[Written], list[Version]]] = []
        provenances: list[tuple[int, dict[str, Any]]] = []
        for message, plan, current, kept in chosen:
            versions, results = results[: len(current)], results[len(current) :]
            written = [
                Written(v, list(w.lineage))
                for v, w in zip(versions, current, strict=True)
                if v is not None
            ]
            targets = [w.version for w in written] + kept
            produced: list[Version] = list(targets)
            if targets:
                provenance = self._provenance(tx, message, plan, targets)
                if isinstance(provenance, Version):
                    produced.append(provenance)  # a replay that changed nothing
                else:
                    provenances.append((len(records), provenance))
            records.append((message, plan, written, produced))
            outcomes[message.id] = Outcome.DONE
        written_provenances = self._execute(tx, [r for _, r in provenances])
        for (index, _), version in zip(provenances, written_provenances, strict=True):
            if version is not None:
                records[index][3].append(version)
        released = self._record(tx, records)
        return Outcomes(outcomes, released)

    def _await_references(
        self, tx: Transaction, ready: list[tuple[Message, MessagePlan]]
    ) -> list[Message]:
        """The messages of `ready` that must wait for a resource that has not arrived, left
        `pending`. One question for the batch's combined plan, in which a resource another
        message of the batch writes counts as there; asked again without the waiting ones
        when others referred to what those would have written (rarely more than once)."""
        waiting: list[Message] = []
        waits: list[tuple[int, str, list[tuple[str, str]]]] = []
        left = list(ready)
        while left:
            found = unresolved(self.ctx, tx, [plan for _, plan in left])
            if not any(found):
                break
            for (message, plan), missing in zip(left, found, strict=True):
                if not self.ctx.settings.referential_integrity:
                    missing = awaited(plan, missing)  # the others are written as they are
                if missing:
                    # Not written with a dangling reference: it waits for its target.
                    reason = "; ".join(m.reason() for m in missing)
                    waits.append((message.id, reason, [m.target for m in missing]))
                    log.info("message %s waits: %s", message.id, missing[0].reason())
                    waiting.append(message)
            held = {m.id for m in waiting}
            remaining = [(m, plan) for m, plan in left if m.id not in held]
            if len(remaining) == len(left):
                break  # none waits (their missing references are written as they are)
            left = remaining
        self.store.await_references(tx, waits, now() + self.reference_wait)
        return waiting

    def _current_writes(
        self,
        tx: Transaction,
        message: Message,
        plan: MessagePlan,
        later: Mapping[tuple[str, str], int],
    ) -> tuple[list[Write], list[Version]]:
        """A message's writes, but those of resources a later message wrote already (the
        feed's rule: the later message wins; this one's data is older, and its last version
        of the resource, if any, is what it produced)."""
        kept: list[Version] = []
        current: list[Write] = []
        for write in plan.writes:
            if later.get(write.key, 0) > message.id:
                kept += self._produced_before(tx, message, write.resource)
            else:
                current.append(write)
        return current, kept

    def _fail(self, message: Message, error: Exception) -> Outcome:
        field = getattr(error, "field", None)
        try:
            label = self.adapters.get(message.adapter).field_label
        except LookupError:
            label = "field"
        where = ", ".join(p for p in (message.origin, f"{label} {field}" if field else "") if p)
        self.store.set_status(
            message.id, status.Event.REJECT, f"{where}: {error}" if where else str(error)
        )
        return Outcome.FAILED

    def _produced_before(
        self, tx: Transaction, message: Message, resource: dict[str, Any]
    ) -> list[Version]:
        """The last version of a superseded resource this message wrote, if it wrote one."""
        version_id = lineage.written_by(tx, resource["resourceType"], resource["id"], message.id)
        if version_id is None:
            return []
        version = tx.version(resource["resourceType"], resource["id"], int(version_id))
        return [version] if version is not None else []

    def _execute(
        self,
        tx: Transaction,
        resources: list[dict[str, Any]],
        references: Sequence[tuple[Found, ...] | None] = (),
        if_match: Sequence[int | None] = (),
    ) -> list[Version | None]:
        """Resources put by their ids, through the executor (which checks their references:
        `references`, those walked already; and the versions they must replace: `if_match`),
        in one plan; the version each left, in order."""
        if not resources:
            return []
        walked = references or [None] * len(resources)
        guards = if_match or [None] * len(resources)
        plan = Plan.of(
            *(
                Update(r["resourceType"], r["id"], r, if_match=guard, references=found)
                for r, found, guard in zip(resources, walked, guards, strict=True)
            )
        )
        return [result.version for result in execute(self.ctx, tx, plan)]

    def _provenance(
        self, tx: Transaction, message: Message, plan: MessagePlan, targets: list[Version]
    ) -> dict[str, Any] | Version:
        """The Provenance of a message's writes to write, or its current version when a
        replay would change nothing."""
        provenance: dict[str, Any] = {
            "resourceType": "Provenance",
            "id": provenance_id(message),
            "target": [{"reference": _reference(v)} for v in targets],
            "recorded": instant(now()),
            # The mapping that made the writes is the policy they were made under
            # (Provenance.policy: "policy or plan the activity was defined by").
            "policy": [mapping_policy(plan.mapping, plan.mapping_version)],
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
        return provenance

    def _record(
        self,
        tx: Transaction,
        records: list[tuple[Message, MessagePlan, list[Written], list[Version]]],
    ) -> list[int]:
        """Lineage rows and `done` for the messages written, a statement each for all; the
        pending messages that waited for what they wrote are released (`received`)."""
        for message, _, written, _ in records:
            # A replay records a version's lineage again; older ones stay. A message never
            # done before (nothing produced) has no lineage rows to replace.
            for w in written if message.produced else ():
                v = w.version
                lineage.forget(tx, message.id, v.resource_type, v.resource_id, v.version_id)
        lineage.record(
            tx,
            [
                {
                    "res_type": w.version.resource_type,
                    "res_id": w.version.resource_id,
                    "version_id": w.version.version_id,
                    "element": element,
                    "source_field": field,
                    "message_id": message.id,
                    "mapping": plan.mapping,
                    "mapping_version": plan.mapping_version,
                }
                for message, plan, written, _ in records
                for w in written
                for element, field in w.lineage
            ],
        )
        self.store.finish(
            tx,
            [
                (message.id, [_reference(v) for v in produced], plan.mapping_version)
                for message, plan, _, produced in records
            ],
            waited=[message.id for message, *_ in records if message.wait_until is not None],
        )
        return self.store.release(
            tx,
            [
                (w.version.resource_type, w.version.resource_id)
                for _, _, written, _ in records
                for w in written
            ],
        )


def _reference(v: Version) -> str:
    return f"{v.resource_type}/{v.resource_id}/_history/{v.version_id}"


_INDEX = re.compile(r"\[\d+\]")


def mapping_policy(name: str, version: str) -> str:
    """The mapping as Provenance.policy (a uri): its name and version."""
    return f"urn:fhir-hub:mapping:{name}|{version}"


class _TxState:
    """The current state as `reconcile` sees it: reads through the write transaction."""

    def __init__(self, tx: Transaction) -> None:
        self._tx = tx

    def current(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        found = self._tx.current(resource_type, resource_id)
        if found is None or found.deleted or found.content is None:
            return None
        content: dict[str, Any] = json.loads(found.content)
        return content

    def version(self, resource_type: str, resource_id: str) -> int | None:
        found = self._tx.current(resource_type, resource_id)
        return None if found is None or found.deleted else found.version_id

    def referrers(self, resource_type: str, resource_id: str) -> list[tuple[str, str]]:
        # One more than a merge moves, so that too many is seen.
        rows = self._tx.referrers([(resource_type, resource_id)], MOST_MOVED + 1)
        return list(dict.fromkeys((r[0], r[1]) for r in rows))


def unresolved(
    ctx: Context, tx: Transaction, plans: Sequence[MessagePlan]
) -> list[list[MissingReference]]:
    """For each of several messages' plans, the references that name nothing live once they
    are all written (the executor's `unresolved` of their combined plan: one lookup), with
    their element paths as the mapping names them and write indexes within each plan."""
    owner: list[tuple[int, int]] = []  # (plan, write within it) of each combined write
    writes: list[Update] = []
    for number, plan in enumerate(plans):
        for index, w in enumerate(plan.writes):
            owner.append((number, index))
            writes.append(Update(w.key[0], w.key[1], w.resource, references=w.references))
    found: list[list[MissingReference]] = [[] for _ in plans]
    for m in executor.unresolved(ctx, tx, Plan(tuple(writes))):
        number, index = owner[m.write]
        found[number].append(MissingReference(index, _INDEX.sub("", m.path), m.reference))
    return found


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
    """A message and its plan, ready to be reconciled and written."""

    message: Message
    attempts: int
    plan: MessagePlan
