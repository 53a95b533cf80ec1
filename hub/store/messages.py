"""The message store's SQL: every inbound unit, committed raw before it is acknowledged.

It is the queue of record. Which status a message may move to, and on which
event, is not decided here: the `Lifecycle` given at construction (the table
in `hub.ingest.status`) names, for each event, the statuses it moves from and
the one it leads to, and every UPDATE of a status is built from it. Celery only
delivers message ids; the sweeper re-delivers what was left behind.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Text,
    and_,
    bindparam,
    cast,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from hub.errors import Invalid
from hub.store import lineage as lineage_rows
from hub.store.repository import Transaction
from hub.store.schema import message_waits, messages


class Lifecycle(Protocol):
    """The statuses and their transitions (`hub.ingest.status`), as the store needs them."""

    open: tuple[str, ...]  # not finished: later messages about its subject wait behind it

    def sources(self, event: str, among: tuple[str, ...] | None = None) -> tuple[str, ...]: ...

    def target(self, event: str) -> str: ...


@dataclass(frozen=True)
class Unit:
    """One inbound unit as it will be stored: raw bytes and where they came from."""

    raw: bytes
    external_id: str
    origin: str | None = None
    event_time: datetime | None = None
    # The unit's own source system, for feeds whose units name it (HL7 v2: MSH-3/MSH-4);
    # None: the one `receive` is given.
    source: str | None = None
    # Refused at receipt (an HL7 v2 message answered AE or AR): stored `failed` with this.
    error: str | None = None


@dataclass(frozen=True)
class Received:
    """What `MessageStore.receive` did with one unit."""

    id: int | None
    new: bool  # stored now; False: a duplicate, `id` is the first delivery's
    # Its external id was taken by a message with other bytes: stored under a flagged one.
    conflicts_with: int | None = None


def _length(column: Column[Any]) -> int:
    size = getattr(column.type, "length", None)
    assert isinstance(size, int), column
    return size


# Sizes of the columns a unit fills, checked here before a batch is written: SQLite does not
# enforce them and PostgreSQL would refuse the whole batch, valid units included. So would
# it a text it cannot store (NUL, or bytes that were not UTF-8, carried as lone surrogates).
SOURCE_MAX = _length(messages.c.source)
CONTENT_TYPE_MAX = _length(messages.c.content_type)
_KEY_MAX = _length(messages.c.order_key)
_EXTERNAL_ID_MAX = _length(messages.c.external_id)
_ORIGIN_MAX = _length(messages.c.origin)
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# Whether any message waits for a reference at all (see `MessageStore.release`).
_ANY_WAITING = select(message_waits.c.message_id).limit(1)


def _storable(text: str) -> bool:
    return _UNSTORABLE.search(text) is None


def check_source(source: str) -> None:
    """A source system's name, as the caller gave it: refused unless it can be stored."""
    if not source or len(source) > SOURCE_MAX or not source.isprintable():
        shown = source if len(source) <= 40 else source[:40] + "…"
        raise Invalid(
            f"the source {shown!r} is not a valid source name: it must be 1 to {SOURCE_MAX} "
            f"printable characters (it has {len(source)})",
            expression=("source",),
        )


def _equality_key(key: str, limit: int) -> str:
    """A key only compared for equality (order key, external id) as stored: itself, or, when
    too long or not storable, a digest of it, equal for equal keys on both databases."""
    if len(key) <= limit and _storable(key):
        return key
    return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _storable_text(text: str) -> str:
    """Descriptive text (an origin, an error quoting the input) with what a store cannot keep
    written as escapes (`\\u0000`)."""
    return _UNSTORABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _label(text: str | None, limit: int) -> str | None:
    """An origin as stored: storable, cut to fit."""
    if text is None:
        return None
    text = _storable_text(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Message:
    id: int
    source: str
    adapter: str
    mapping: str | None
    mapping_version: str | None
    external_id: str
    content_type: str | None
    origin: str | None
    order_key: str | None
    received_at: datetime
    event_time: datetime | None
    raw: bytes
    status: str
    attempts: int
    error: str | None
    produced: list[str]
    updated_at: datetime
    wait_until: datetime | None = None
    conflicts_with: int | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "adapter": self.adapter,
            "mapping": self.mapping,
            "mappingVersion": self.mapping_version,
            "externalId": self.external_id,
            "origin": self.origin,
            "status": self.status,
            "attempts": self.attempts,
            "error": self.error,
            "receivedAt": _iso(self.received_at),
            "updatedAt": _iso(self.updated_at),
            "produced": self.produced,
            # A pending message: when it stops waiting (and fails, naming what it waited for).
            **({"waitUntil": _iso(self.wait_until)} if self.wait_until else {}),
            # The same external id (an HL7 control id) came before with other bytes.
            **({"conflictsWith": self.conflicts_with} if self.conflicts_with else {}),
        }


def _iso(t: datetime | None) -> str | None:
    return _utc(t).isoformat().replace("+00:00", "Z") if t else None


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def now() -> datetime:
    return datetime.now(UTC)


def _message(row: Any) -> Message:
    m = row._mapping
    return Message(
        id=m["id"],
        source=m["source"],
        adapter=m["adapter"],
        mapping=m["mapping"],
        mapping_version=m["mapping_version"],
        external_id=m["external_id"],
        content_type=m["content_type"],
        origin=m["origin"],
        order_key=m["order_key"],
        received_at=_utc(m["received_at"]),
        event_time=_utc(m["event_time"]) if m["event_time"] else None,
        raw=m["raw"],
        status=m["status"],
        attempts=m["attempts"],
        error=m["error"],
        produced=json.loads(m["produced"]) if m["produced"] else [],
        updated_at=_utc(m["updated_at"]),
        wait_until=_utc(m["wait_until"]) if m["wait_until"] else None,
        conflicts_with=m["conflicts_with"],
    )


class MessageStore:
    def __init__(self, engine: Engine, lifecycle: Lifecycle) -> None:
        self.engine = engine
        self.lifecycle = lifecycle
        self.open = lifecycle.open

    def _moving(self, event: str, among: tuple[str, ...] | None = None) -> tuple[Any, str]:
        """The WHERE clause and the status of a move on `event` (from `among` only)."""
        return messages.c.status.in_(self.lifecycle.sources(event, among)), self.lifecycle.target(
            event
        )

    def receive(
        self,
        units: Sequence[Unit],
        *,
        source: str | None,
        adapter: str,
        mapping: str | None,
        mapping_version: str | None = None,
        content_type: str | None = None,
        order_keys: Sequence[str | None] | None = None,
    ) -> list[Received]:
        """Commit units raw, in one transaction; answer what became of each.

        A unit whose source and external id are stored already is a duplicate when its
        bytes are the same (answered with the first one's id, nothing stored); with other
        bytes it is not a resend: it is stored under its external id and a digest of its
        bytes, flagged with the first one's id (`conflicts_with`). A unit with `source`
        set is stored under it, else under `source`. `order_keys`, one per unit, name the
        subject each is about (see `Pipeline.order_key`).
        """
        at = now()
        keys = order_keys if order_keys is not None else [None] * len(units)
        for unit_source in {u.source or source for u in units}:
            if unit_source is None:
                raise ValueError("a unit without a source, and no source given")
            check_source(unit_source)  # the caller checked it, to refuse the request early
        units = [
            replace(
                u,
                source=u.source or source,
                external_id=_equality_key(u.external_id, _EXTERNAL_ID_MAX),
                origin=_label(u.origin, _ORIGIN_MAX),
                error=_storable_text(u.error) if u.error is not None else None,
            )
            for u in units
        ]
        if not units:
            return []
        received, refused = self.lifecycle.target("receive"), self.lifecycle.target("refuse")

        def row(u: Unit, key: str | None, conflicts_with: int | None = None) -> dict[str, Any]:
            return {
                "source": u.source,
                "adapter": adapter,
                "mapping": mapping,
                "mapping_version": mapping_version,
                "external_id": u.external_id,
                "content_type": content_type,
                "origin": u.origin,
                "order_key": _equality_key(key, _KEY_MAX) if key is not None else None,
                "received_at": at,
                "event_time": u.event_time,
                "raw": u.raw,
                "status": refused if u.error is not None else received,
                "attempts": 0,
                "error": u.error,
                "produced": None,
                "updated_at": at,
                "conflicts_with": conflicts_with,
            }

        dialect = self.engine.dialect.name
        stmt: Any
        if dialect == "postgresql":
            stmt = postgresql.insert(messages).on_conflict_do_nothing(
                constraint="uq_messages_source_external"
            )
        else:
            stmt = sqlite.insert(messages).on_conflict_do_nothing()

        def insert(conn: Any, rows: list[dict[str, Any]]) -> dict[tuple[str | None, str], int]:
            """Insert the rows whose (source, external id) is free; answer their ids."""
            if dialect in _GROUP_INSERTS:
                return _GROUP_INSERTS[dialect](conn, rows)
            result = conn.execute(
                stmt.returning(messages.c.source, messages.c.external_id, messages.c.id), rows
            )
            return {(r[0], r[1]): int(r[2]) for r in result}

        def existing(conn: Any, keys: set[tuple[str | None, str]]) -> dict[Any, int]:
            if not keys:
                return {}
            # Two IN lists, not a row-value IN: SQLite looks the pairs up by the unique
            # index with these, and scans the table with that.
            rows = conn.execute(
                select(messages.c.source, messages.c.external_id, messages.c.id).where(
                    messages.c.source.in_({s for s, _ in keys}),
                    messages.c.external_id.in_({e for _, e in keys}),
                )
            ).all()
            return {(r[0], r[1]): int(r[2]) for r in rows if (r[0], r[1]) in keys}

        with self.engine.connect().execution_options(hub_write=True) as conn, conn.begin():
            new_ids = insert(conn, [row(u, k) for u, k in zip(units, keys, strict=True)])
            # Not stored now: a resend when its bytes are the ones stored, else a conflict.
            old_ids = existing(conn, {(u.source, u.external_id) for u in units} - set(new_ids))
            stored_raw: dict[int, bytes] = {}
            if old_ids:
                stored_raw = {
                    int(r[0]): bytes(r[1])
                    for r in conn.execute(
                        select(messages.c.id, messages.c.raw).where(
                            messages.c.id.in_(set(old_ids.values()))
                        )
                    )
                }
            first_in_batch: dict[tuple[str | None, str], bytes] = {}
            conflicts: list[tuple[int, Unit, str | None, int]] = []
            for i, (u, k) in enumerate(zip(units, keys, strict=True)):
                key = (u.source, u.external_id)
                first_raw = first_in_batch.setdefault(key, u.raw)
                if key in new_ids:
                    original, holder = first_raw, new_ids[key]
                elif key in old_ids:
                    original, holder = stored_raw.get(old_ids[key], u.raw), old_ids[key]
                else:
                    continue
                if original != u.raw:
                    conflicts.append((i, u, k, holder))
            renamed: dict[int, tuple[Unit, int]] = {}
            if conflicts:
                rows = []
                for i, u, k, first in conflicts:
                    digest = hashlib.sha256(u.raw).hexdigest()
                    flagged = replace(
                        u, external_id=_equality_key(f"{u.external_id}#{digest}", _EXTERNAL_ID_MAX)
                    )
                    renamed[i] = (flagged, first)
                    rows.append(row(flagged, k, conflicts_with=first))
                flagged_new = insert(conn, rows)
                new_ids.update(flagged_new)
                flagged_keys = {(u.source, u.external_id) for u, _ in renamed.values()}
                old_ids.update(existing(conn, flagged_keys - set(flagged_new)))
        by_key: dict[tuple[str | None, str], tuple[int | None, bool]] = {
            **{k: (v, False) for k, v in old_ids.items()},
            **{k: (v, True) for k, v in new_ids.items()},
        }
        answers, seen = [], set()
        for i, u in enumerate(units):
            conflicts_with: int | None = None
            if i in renamed:
                u, conflicts_with = renamed[i]
            key = (u.source, u.external_id)
            message_id, new = by_key.get(key, (None, False))
            # The same unit twice in one batch: one message, new the first time only.
            answers.append(Received(message_id, new and key not in seen, conflicts_with))
            seen.add(key)
        return answers

    def get(self, message_id: int) -> Message | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(messages).where(messages.c.id == message_id)).first()
        return _message(row) if row else None

    def get_many(self, message_ids: Sequence[int]) -> list[Message]:
        """The messages of `message_ids` that exist, in id order."""
        stmt = select(messages).where(messages.c.id.in_(list(message_ids))).order_by(messages.c.id)
        with self.engine.connect() as conn:
            return [_message(r) for r in conn.execute(stmt)]

    def find(
        self,
        status: str | None = None,
        source: str | None = None,
        limit: int = 100,
        before: int | None = None,
    ) -> list[Message]:
        stmt = select(messages).order_by(messages.c.id.desc()).limit(limit)
        if status:
            stmt = stmt.where(messages.c.status == status)
        if source:
            stmt = stmt.where(messages.c.source == source)
        if before:
            stmt = stmt.where(messages.c.id < before)
        with self.engine.connect() as conn:
            return [_message(r) for r in conn.execute(stmt)]

    def counts(self, ids: Iterable[int] | None = None) -> dict[str, int]:
        stmt = select(messages.c.status, func.count()).group_by(messages.c.status)
        if ids is not None:
            stmt = stmt.where(messages.c.id.in_(list(ids)))
        with self.engine.connect() as conn:
            return {r[0]: int(r[1]) for r in conn.execute(stmt)}

    def results(
        self, ids: Sequence[int]
    ) -> list[tuple[int, str, list[str], str | None, str | None]]:
        """(id, status, produced, error, origin) of each message, in id order."""
        stmt = (
            select(
                messages.c.id,
                messages.c.status,
                messages.c.produced,
                messages.c.error,
                messages.c.origin,
            )
            .where(messages.c.id.in_(list(ids)))
            .order_by(messages.c.id)
        )
        with self.engine.connect() as conn:
            return [
                (r[0], r[1], json.loads(r[2]) if r[2] else [], r[3], r[4])
                for r in conn.execute(stmt)
            ]

    def open_ids(self, ids: Sequence[int], statuses: Sequence[str] | None = None) -> list[int]:
        """Those of `ids` still open (or of `statuses`), in id order."""
        statuses = list(statuses if statuses is not None else self.open)
        stmt = (
            select(messages.c.id)
            .where(messages.c.id.in_(list(ids)), messages.c.status.in_(statuses))
            .order_by(messages.c.id)
        )
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(stmt)]

    def note_attempts(self, message_ids: Sequence[int]) -> dict[int, int]:
        """Count an attempt of each still open message (now `processing`), in its own
        transaction; answer their counts. Those no longer open are left out."""
        if not message_ids:
            return {}
        where, status = self._moving("take")
        with self.engine.connect().execution_options(hub_write=True) as conn, conn.begin():
            rows = conn.execute(
                update(messages)
                .where(messages.c.id.in_(list(message_ids)), where)
                .values(status=status, attempts=messages.c.attempts + 1, updated_at=now())
                .returning(messages.c.id, messages.c.attempts)
            ).all()
        return {int(r[0]): int(r[1]) for r in rows}

    def open_before(self, batch: Sequence[Message]) -> dict[tuple[str, str], int]:
        """For the subjects (source, order key) of `batch`: the first open message about each
        that is not in `batch`, if it came before the batch's last message about it."""
        subjects: dict[tuple[str, str], int] = {}
        for m in batch:
            if m.order_key:
                key = (m.source, m.order_key)
                subjects[key] = max(subjects.get(key, 0), m.id)
        if not subjects:
            return {}
        stmt = (
            select(messages.c.source, messages.c.order_key, func.min(messages.c.id))
            .where(
                tuple_(messages.c.source, messages.c.order_key).in_(list(subjects)),
                messages.c.status.in_(self.open),
                messages.c.id.not_in([m.id for m in batch]),
                messages.c.id < max(subjects.values()),
            )
            .group_by(messages.c.source, messages.c.order_key)
        )
        with self.engine.connect() as conn:
            found = {(r[0], r[1]): int(r[2]) for r in conn.execute(stmt)}
        return {k: v for k, v in found.items() if v < subjects[k]}

    def open_about(
        self, message: Message, *, before: bool = False, limit: int | None = None
    ) -> list[int]:
        """Open messages from `message`'s source about its subject (its order key), in id
        order; `before`: only those received before it."""
        if not message.order_key:
            return []
        stmt = (
            select(messages.c.id)
            .where(
                messages.c.source == message.source,
                messages.c.order_key == message.order_key,
                messages.c.status.in_(self.open),
            )
            .order_by(messages.c.id)
            .limit(limit)
        )
        if before:
            stmt = stmt.where(messages.c.id < message.id)
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(stmt)]

    def first_open_about(self, message_ids: Sequence[int]) -> list[int]:
        """For the subjects of these messages that are finished: the earliest open message
        about each (from the same source), in id order."""
        if not message_ids:
            return []
        subjects = (
            select(messages.c.source, messages.c.order_key)
            .where(
                messages.c.id.in_(list(message_ids)),
                messages.c.order_key.is_not(None),
                messages.c.status.not_in(self.open),
            )
            .distinct()
            .subquery()
        )
        stmt = (
            select(func.min(messages.c.id))
            .join(
                subjects,
                and_(
                    messages.c.source == subjects.c.source,
                    messages.c.order_key == subjects.c.order_key,
                ),
            )
            .where(messages.c.status.in_(self.open))
            .group_by(messages.c.source, messages.c.order_key)
        )
        with self.engine.connect() as conn:
            return sorted(int(r[0]) for r in conn.execute(stmt))

    def wait_behind(self, message_ids: Sequence[int], *, taken: bool = False) -> None:
        """Mark messages left for the worker finishing an earlier one about their subject (see
        `hub.ingest.dispatch.follow`): `waiting`. Those still `received`, where one another
        worker has taken meanwhile stays as it is; `taken`: those this worker took
        (`processing`) and holds back, their attempt given back."""
        if not message_ids:
            return
        taking, values = (
            ("processing", {"attempts": messages.c.attempts - 1}) if taken else ("received", {})
        )
        where, status = self._moving("wait", (taking,))
        with self.engine.connect().execution_options(hub_write=True) as conn, conn.begin():
            conn.execute(
                update(messages)
                .where(messages.c.id.in_(list(message_ids)), where)
                .values(status=status, updated_at=now(), **values)
            )

    def set_status(self, message_id: int, event: str, error: str | None = None) -> None:
        """End an open message (`reject`: failed, `give-up`: dead); one another worker
        finished stays as it is."""
        if error is not None:
            # An error may quote the input (a cell holding NUL), which PostgreSQL would refuse,
            # and the message would stay open.
            error = _storable_text(error)
        where, status = self._moving(event)
        with self.engine.connect().execution_options(hub_write=True) as conn, conn.begin():
            conn.execute(
                update(messages)
                .where(messages.c.id == message_id, where)
                .values(status=status, error=error, updated_at=now())
            )

    def reopen(self, message_ids: Sequence[int], *, event: str) -> list[int]:
        """Put messages back to received (`retry`: failed/dead ones; `replay`: finished ones)."""
        statuses, status = self.lifecycle.sources(event), self.lifecycle.target(event)
        with self.engine.connect().execution_options(hub_write=True) as conn, conn.begin():
            ids = [
                r[0]
                for r in conn.execute(
                    select(messages.c.id)
                    .where(
                        messages.c.id.in_(list(message_ids)), messages.c.status.in_(list(statuses))
                    )
                    .order_by(messages.c.id)
                )
            ]  # in id order: replayed as they were received
            if ids:
                conn.execute(
                    update(messages)
                    .where(messages.c.id.in_(ids))
                    .values(
                        status=status, attempts=0, error=None, wait_until=None, updated_at=now()
                    )
                )
                conn.execute(delete(message_waits).where(message_waits.c.message_id.in_(ids)))
        return ids

    def stale(self, older_than: timedelta, limit: int = 1000) -> list[int]:
        """Open messages nobody finished: lost tasks, killed workers, a restarted broker."""
        cutoff = now() - older_than
        with self.engine.connect() as conn:
            return [
                r[0]
                for r in conn.execute(
                    select(messages.c.id)
                    .where(messages.c.status.in_(self.open), messages.c.updated_at < cutoff)
                    .order_by(messages.c.id)
                    .limit(limit)
                )
            ]

    def claim_stale(
        self,
        older_than: timedelta,
        limit: int = 1000,
        statuses: Sequence[str] = (),
        unfollowed: bool = False,
    ) -> list[int]:
        """Open messages (of `statuses`) that have not moved for `older_than`, marked as moved
        in the same transaction: two sweeps running together never send one message twice
        (PostgreSQL skips the rows the other has locked; SQLite writers queue).

        `unfollowed`: only messages whose earlier ones about the same subject are all
        finished, and which the worker finishing the last of those should have gone on with
        (`hub.ingest.dispatch.follow`): it died, or failed, before it did.
        """
        cutoff = now() - older_than
        statuses = list(statuses or self.open)
        conds = [messages.c.status.in_(statuses), messages.c.updated_at < cutoff]
        if unfollowed:
            earlier = messages.alias("earlier")
            same = [
                earlier.c.source == messages.c.source,
                earlier.c.order_key == messages.c.order_key,
                earlier.c.id < messages.c.id,
            ]
            conds += [
                messages.c.order_key.is_not(None),
                exists().where(*same),
                # ...finished before the cutoff too: one just finished is being followed.
                ~exists().where(
                    *same, or_(earlier.c.status.in_(self.open), earlier.c.updated_at >= cutoff)
                ),
            ]
        stmt = select(messages.c.id).where(*conds).order_by(messages.c.id).limit(limit)
        with self.engine.connect().execution_options(hub_write=True) as conn, conn.begin():
            if conn.dialect.name == "postgresql":
                stmt = stmt.with_for_update(skip_locked=True)
            ids = [r[0] for r in conn.execute(stmt)]
            if ids:
                conn.execute(
                    update(messages).where(messages.c.id.in_(ids)).values(updated_at=now())
                )
        return ids

    def ids(
        self,
        *,
        source: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        statuses: Sequence[str] = (),
    ) -> list[int]:
        conds = []
        if source:
            conds.append(messages.c.source == source)
        if since:
            conds.append(messages.c.received_at >= since)
        if until:
            conds.append(messages.c.received_at < until)
        if statuses:
            conds.append(messages.c.status.in_(list(statuses)))
        with self.engine.connect() as conn:
            return [
                r[0]
                for r in conn.execute(
                    select(messages.c.id).where(and_(*conds)).order_by(messages.c.id)
                )
            ]

    # --- within a feed write's transaction -----------------------------------------------

    def claim(self, tx: Transaction, message_ids: Sequence[int]) -> dict[int, list[str]]:
        """Lock the messages' rows for this transaction; of those still being processed, what
        each produced before (empty unless it is a replay)."""
        rows = tx.lock_row(
            select(messages.c.id, messages.c.status, messages.c.produced)
            .where(messages.c.id.in_(list(message_ids)))
            .order_by(messages.c.id)
        )
        writable = self.lifecycle.sources("write")
        return {int(r[0]): list(json.loads(r[2])) if r[2] else [] for r in rows if r[1] in writable}

    def finish(
        self,
        tx: Transaction,
        done: Sequence[tuple[int, list[str], str | None]],
        *,
        waited: Sequence[int],
    ) -> None:
        """Mark messages done with what they produced and the version of the mapping that
        produced it; `waited`: those of them that waited for a reference, whose wait rows go."""
        status = self.lifecycle.target("write")
        if done and tx.dialect == "postgresql":
            # One statement for the batch: executemany makes PostgreSQL parse and plan an
            # UPDATE a message.
            given = (
                func.unnest(
                    cast(bindparam("ids", [m for m, _, _ in done]), postgresql.ARRAY(BigInteger)),
                    cast(
                        bindparam("produced", [json.dumps(p) for _, p, _ in done]),
                        postgresql.ARRAY(Text),
                    ),
                    cast(bindparam("versions", [v for _, _, v in done]), postgresql.ARRAY(Text)),
                )
                .table_valued("id", "produced", "version")
                .render_derived()
            )
            tx.execute(
                update(messages)
                .where(
                    messages.c.id == given.c.id,
                    messages.c.status.in_(self.lifecycle.sources("write")),
                )
                .values(
                    status=status,
                    error=None,
                    produced=given.c.produced,
                    mapping_version=given.c.version,
                    wait_until=None,
                    updated_at=now(),
                )
            )
            done = ()
        # One UPDATE for many rows (executemany) takes no IN list: each status is spelled out.
        where = or_(*(messages.c.status == s for s in self.lifecycle.sources("write")))
        if done:
            tx.execute(
                update(messages)
                .where(messages.c.id == bindparam("message"), where)
                .values(
                    status=status,
                    error=None,
                    produced=bindparam("produced"),
                    mapping_version=bindparam("version"),
                    wait_until=None,
                    updated_at=now(),
                ),
                [{"message": m, "produced": json.dumps(p), "version": v} for m, p, v in done],
            )
        if waited:
            tx.execute(delete(message_waits).where(message_waits.c.message_id.in_(list(waited))))

    def await_references(
        self,
        tx: Transaction,
        waits: Sequence[tuple[int, str, Sequence[tuple[str, str]]]],
        deadline: datetime,
    ) -> None:
        """Leave messages `pending` until the resources they refer to arrive (or `deadline`,
        kept from a message's first wait): (message id, reason, missing resources) each, three
        statements for all. Their attempt is given back: waiting is no failure."""
        if not waits:
            return
        status = self.lifecycle.target("await-reference")
        # One UPDATE for many rows (executemany) takes no IN list: each status is spelled out.
        where = or_(*(messages.c.status == s for s in self.lifecycle.sources("await-reference")))
        tx.execute(
            update(messages)
            .where(messages.c.id == bindparam("message"), where)
            .values(
                status=status,
                error=bindparam("reason"),
                attempts=messages.c.attempts - 1,
                wait_until=func.coalesce(messages.c.wait_until, deadline),
                updated_at=now(),
            ),
            [{"message": m, "reason": _storable_text(reason)} for m, reason, _ in waits],
        )
        ids = [m for m, _, _ in waits]
        tx.execute(delete(message_waits).where(message_waits.c.message_id.in_(ids)))
        tx.execute(
            insert(message_waits),
            [
                {"message_id": m, "res_type": t, "res_id": i}
                for m, _, missing in waits
                for t, i in dict.fromkeys(missing)
            ],
        )

    def release(self, tx: Transaction, written: Sequence[tuple[str, str]]) -> list[int]:
        """The pending messages waiting for any of these resources, put back to `received` in
        this transaction (their wait rows go), in id order: to be sent again once it commits.
        An indexed lookup of the written resources, nothing scanned."""
        keys = list(dict.fromkeys(written))
        if not keys or not tx.rows(_ANY_WAITING):
            # Mostly nothing waits: one row read of a tiny table says so, where the lookup of
            # every written resource costs each batch a statement built for its size.
            return []
        waiting = tx.rows(
            select(message_waits.c.message_id)
            .where(tuple_(message_waits.c.res_type, message_waits.c.res_id).in_(keys))
            .distinct()
        )
        ids = sorted(int(r[0]) for r in waiting)
        if not ids:
            return []
        where, status = self._moving("arrived")
        moved = tx.rows(
            update(messages)
            .where(messages.c.id.in_(ids), where)
            .values(status=status, updated_at=now())
            .returning(messages.c.id)
        )
        tx.execute(delete(message_waits).where(message_waits.c.message_id.in_(ids)))
        return sorted(int(r[0]) for r in moved)

    def expire(self, at: datetime, limit: int = 1000) -> list[int]:
        """Fail the pending messages whose wait ended before `at`, their reason kept."""
        where, status = self._moving("expire")
        with self.engine.connect().execution_options(hub_write=True) as conn, conn.begin():
            stmt = (
                select(messages.c.id)
                .where(where, messages.c.wait_until < at)
                .order_by(messages.c.id)
                .limit(limit)
            )
            if conn.dialect.name == "postgresql":
                stmt = stmt.with_for_update(skip_locked=True)
            ids = [r[0] for r in conn.execute(stmt)]
            if ids:
                conn.execute(
                    update(messages)
                    .where(messages.c.id.in_(ids), where)
                    .values(
                        status=status,
                        error=func.coalesce(messages.c.error, "") + " (stopped waiting)",
                        updated_at=now(),
                    )
                )
                conn.execute(delete(message_waits).where(message_waits.c.message_id.in_(ids)))
        return ids

    def waits_for(self, message_id: int) -> list[str]:
        """What a pending message waits for, as references."""
        stmt = (
            select(message_waits.c.res_type, message_waits.c.res_id)
            .where(message_waits.c.message_id == message_id)
            .order_by(message_waits.c.res_type, message_waits.c.res_id)
        )
        with self.engine.connect() as conn:
            return [f"{r[0]}/{r[1]}" for r in conn.execute(stmt)]

    def lineage_of(
        self, resource_type: str, resource_id: str, version_id: int | None = None
    ) -> list[dict[str, Any]]:
        return lineage_rows.of_resource(self.engine, resource_type, resource_id, version_id)

    def lineage_for_message(self, message_id: int) -> list[dict[str, Any]]:
        return lineage_rows.of_message(self.engine, message_id)


# -- the receivers' group insert ---------------------------------------------------------------
# A receiver commits every group of messages before it acknowledges them, so this insert is
# on the path of every ACK. SQLAlchemy's multi-row INSERT ... RETURNING is rebuilt for each
# group size (and psycopg converts it again each time): the driver's own executemany of
# one fixed statement does the same for half the CPU. Values go through the columns' own
# bind processors, so they are stored exactly as SQLAlchemy would store them.

_INSERTED = [c.name for c in messages.columns if c.name != "id"]


def _processors(dialect: Any) -> list[Any]:
    return [messages.c[name].type.bind_processor(dialect) for name in _INSERTED]


def _params(conn: Any, rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    dialect = conn.dialect
    processors = _PROCESSORS.get(dialect.name)
    if processors is None:
        processors = _PROCESSORS[dialect.name] = _processors(dialect)
    return [
        tuple(
            p(value) if p is not None and value is not None else value
            for name, p in zip(_INSERTED, processors, strict=True)
            for value in [row.get(name)]
        )
        for row in rows
    ]


_PROCESSORS: dict[str, list[Any]] = {}


def _insert_sqlite(conn: Any, rows: list[dict[str, Any]]) -> dict[tuple[str | None, str], int]:
    # The group's transaction holds SQLite's one write lock (BEGIN IMMEDIATE): the rows with
    # ids above the largest before the insert are this insert's, and no one else's.
    columns = ", ".join(_INSERTED)
    marks = ", ".join("?" * len(_INSERTED))
    before = conn.exec_driver_sql("SELECT coalesce(max(id), 0) FROM messages").scalar_one()
    conn.exec_driver_sql(
        f"INSERT INTO messages ({columns}) VALUES ({marks}) ON CONFLICT DO NOTHING",
        _params(conn, rows),
    )
    found = conn.exec_driver_sql(
        "SELECT source, external_id, id FROM messages WHERE id > ?", (before,)
    )
    return {(r[0], r[1]): int(r[2]) for r in found}


def _insert_postgresql(conn: Any, rows: list[dict[str, Any]]) -> dict[tuple[str | None, str], int]:
    # One statement whatever the group's size, so psycopg prepares it once; executemany
    # with `returning` pipelines the rows and answers each one's id (none when taken).
    columns = ", ".join(_INSERTED)
    marks = ", ".join(["%s"] * len(_INSERTED))
    sql = (
        f"INSERT INTO messages ({columns}) VALUES ({marks}) "
        "ON CONFLICT ON CONSTRAINT uq_messages_source_external DO NOTHING "
        "RETURNING source, external_id, id"
    )
    out: dict[tuple[str | None, str], int] = {}
    with conn.connection.driver_connection.cursor() as cur:
        cur.executemany(sql, _params(conn, rows), returning=True)
        while True:
            for r in cur.fetchall():
                out[(r[0], r[1])] = int(r[2])
            if not cur.nextset():
                break
    return out


_GROUP_INSERTS = {"sqlite": _insert_sqlite, "postgresql": _insert_postgresql}
