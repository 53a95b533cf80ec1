"""The ingestion service: take a feed's input, commit it, get it processed.

Built once at start-up (by `hub serve`, the worker and the CLI) from the
settings: the message store, the adapter registry, the mapping catalogue, the
pipeline and a dispatcher (Celery when a broker is set, else threads or
inline processing).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import IO, Any

from hub.errors import Invalid, NotFound
from hub.ingest.adapters import AdapterRegistry, Unit
from hub.ingest.dispatch import (
    CeleryDispatcher,
    Dispatcher,
    InlineDispatcher,
    Sweeper,
    ThreadDispatcher,
)
from hub.ingest.mapping import Mapping_
from hub.ingest.messages import (
    ACTIVE,
    CONTENT_TYPE_MAX,
    DEAD,
    DONE,
    FAILED,
    PENDING,
    MessageStore,
    check_source,
)
from hub.ingest.pipeline import Pipeline
from hub.ingest.status import Event
from hub.interactions.context import Context
from hub.settings import Settings

BATCH = 500


@dataclass
class Summary:
    units: int = 0
    accepted: int = 0
    duplicates: int = 0
    done: int = 0
    rejected: int = 0
    dead: int = 0
    open: int = 0
    pending: int = 0  # waiting for a resource they refer to (another feed's, say)
    resources: int = 0
    # Each message that did not end done, once: (status, where it came from and why).
    not_done: list[tuple[str, str]] = field(default_factory=list)
    message_ids: list[int] = field(default_factory=list)
    duplicate_ids: set[int] = field(default_factory=set)  # received before: written nothing now

    def count(self, by_status: Mapping[str, int]) -> None:
        """Set the counts by outcome from the messages' statuses."""
        self.done = by_status.get(DONE, 0)
        self.rejected = by_status.get(FAILED, 0)
        self.dead = by_status.get(DEAD, 0)
        self.open = sum(by_status.get(s, 0) for s in ACTIVE)
        self.pending = by_status.get(PENDING, 0)

    @property
    def errors(self) -> list[str]:
        """Why each rejected, dead or pending message is."""
        return [why for status, why in self.not_done if status in (FAILED, DEAD, PENDING)]

    def to_json(self) -> dict[str, Any]:
        return {
            "units": self.units,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "done": self.done,
            "rejected": self.rejected,
            "dead": self.dead,
            "open": self.open,
            "pending": self.pending,
            "resourcesWritten": self.resources,
            "errors": self.errors[:100],
        }


def _batches(units: Iterator[Unit], size: int) -> Iterator[list[Unit]]:
    batch: list[Unit] = []
    for unit in units:
        batch.append(unit)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class IngestService:
    def __init__(self, ctx: Context, settings: Settings, dispatcher: str | None = None) -> None:
        engine = getattr(ctx.repo, "engine", None)
        if engine is None:
            raise TypeError("feed ingestion needs the SQL repository")
        self.ctx = ctx
        self.settings = settings
        self.store = MessageStore(engine)
        self.adapters = AdapterRegistry.discover(settings.adapters)
        # The hub's mappings, and those adapter packages ship (the hub's win on a name clash).
        self.mappings: dict[str, Mapping_] = self.adapters.mappings(settings.mappings_dir)
        self.pipeline = Pipeline(
            ctx,
            self.store,
            self.adapters,
            self.mappings,
            settings.ingest_max_attempts,
            settings.ingest_reference_wait_seconds,
        )
        mode = dispatcher or ("celery" if settings.broker_url else "threads")
        self.dispatcher: Dispatcher
        if mode == "celery":
            self.dispatcher = CeleryDispatcher(settings.ingest_batch)
        elif mode == "threads":
            self.dispatcher = ThreadDispatcher(
                self.pipeline, settings.ingest_threads, settings.ingest_batch
            )
        else:
            self.dispatcher = InlineDispatcher(self.pipeline, batch=settings.ingest_batch)
        self.mode = mode
        self.sweeper: Sweeper | None = None

    def start_sweeper(self) -> None:
        self.sweeper = Sweeper(
            self.store,
            self.dispatcher,
            timedelta(seconds=self.settings.ingest_stale_seconds),
            self.settings.ingest_sweep_seconds,
        )
        self.sweeper.start()

    def close(self) -> None:
        if self.sweeper is not None:
            self.sweeper.stop()
        self.dispatcher.close()

    def mapping(self, adapter: str, name: str | None) -> Mapping_:
        if not name:
            # Without one, every unit would be stored only to fail: refuse the request instead.
            raise Invalid(
                f"the mapping parameter is required: the name of a mapping for the {adapter} "
                "adapter (`hub adapters list` shows them)",
                expression=("mapping",),
            )
        mapping = self.mappings.get(name)
        if mapping is None:
            known = sorted(m.name for m in self.mappings.values() if m.adapter == adapter)
            raise NotFound(
                f"unknown mapping '{name}' for adapter {adapter}; "
                f"known: {', '.join(known) or 'none'}"
            )
        if mapping.adapter != adapter:
            raise Invalid(f"mapping '{name}' is for the {mapping.adapter} adapter, not {adapter}")
        return mapping

    def ingest(
        self,
        adapter_name: str,
        mapping_name: str | None,
        stream: IO[bytes],
        origin: str,
        *,
        source: str | None = None,
        content_type: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
        progress: Callable[[Summary], None] | None = None,
    ) -> Summary:
        """Commit every unit of `stream` raw, then hand the new ones to the dispatcher.

        Units are committed in batches before they are dispatched: once this
        returns (or a batch is reported), those units are safe whatever happens
        to the workers. The request is refused (`Invalid`, nothing stored) without a
        mapping, with a source or content type that cannot be stored, or when the
        input holds no unit. `timeout`: how long to wait, at most (None: until done).
        """
        try:
            adapter = self.adapters.get(adapter_name)
        except LookupError as e:
            raise NotFound(str(e)) from None
        # An adapter whose units name their source and whose message map is chosen per
        # message (HL7 v2: MSH-3/MSH-4 and MSH-9) takes no mapping nor source here.
        per_message = bool(getattr(adapter, "chooses_mapping", False))
        mapping = None if per_message else self.mapping(adapter_name, mapping_name)
        if per_message:
            mapping_name = None
        else:
            assert mapping is not None
            source = source or mapping.source
            check_source(source)
        if content_type is not None and len(content_type) > CONTENT_TYPE_MAX:
            raise Invalid(
                f"the Content-Type is {len(content_type)} characters long; "
                f"at most {CONTENT_TYPE_MAX} are accepted",
                expression=("Content-Type",),
            )
        summary = Summary()
        accepted: set[int] = set()
        for batch in _batches(adapter.split(stream, origin, mapping_name), BATCH):  # type: ignore[arg-type]
            results = self.store.receive(
                batch,
                source=source,
                adapter=adapter_name,
                mapping=mapping_name,
                mapping_version=mapping.version if mapping else None,
                content_type=content_type,
                order_keys=[
                    self.pipeline.order_key(
                        adapter_name, mapping_name, u.raw, u.source or source or ""
                    )
                    if u.error is None
                    else None
                    for u in batch
                ],
            )
            fresh, repeated = [], []
            for unit, result in zip(batch, results, strict=True):
                summary.units += 1
                message_id = result.id
                if message_id is None:
                    continue
                summary.message_ids.append(message_id)
                if result.new:
                    summary.accepted += 1
                    if unit.error is None:  # one refused at receipt is stored failed
                        fresh.append(message_id)
                else:
                    summary.duplicates += 1
                    repeated.append(message_id)
            accepted.update(fresh)
            summary.duplicate_ids.update(m for m in repeated if m not in accepted)
            self.dispatcher.submit(fresh)
            if self.mode == "inline" and repeated:
                # No sweeper works the store here: finish what an interrupted run left open.
                self.dispatcher.submit(self.store.open_ids(repeated))
            if progress:
                progress(summary)
        if summary.units == 0:
            raise Invalid(
                f"{origin} holds nothing to ingest: no {adapter_name} unit "
                "(empty, or a CSV header line without rows)"
            )
        if wait or self.mode == "inline":
            self.wait(summary.message_ids, timeout=timeout, progress=progress, summary=summary)
        return summary

    def wait(
        self,
        ids: list[int],
        *,
        timeout: float | None = None,
        progress: Callable[[Summary], None] | None = None,
        summary: Summary | None = None,
    ) -> Summary:
        summary = summary or Summary(message_ids=ids)
        deadline = time.monotonic() + timeout if timeout else None
        while True:
            counts: dict[str, int] = {}
            for start in range(0, len(ids), 5000):
                for status, n in self.store.counts(ids[start : start + 5000]).items():
                    counts[status] = counts.get(status, 0) + n
            summary.count(counts)
            if progress:
                progress(summary)
            if summary.open == 0 or (deadline and time.monotonic() > deadline):
                break
            time.sleep(0.5)
        self._tally(summary)
        return summary

    def _tally(self, summary: Summary) -> None:
        """Resources written, and the outcome of each message (a unit repeated in the input is
        one message; one sent before has the outcome of its first delivery)."""
        summary.resources = 0
        summary.not_done = []
        ids = list(dict.fromkeys(summary.message_ids))
        counts: Counter[str] = Counter()
        for start in range(0, len(ids), 1000):
            for message_id, status, produced, error, origin in self.store.results(
                ids[start : start + 1000]
            ):
                counts[status] += 1
                if message_id not in summary.duplicate_ids:
                    summary.resources += sum(1 for p in produced if not p.startswith("Provenance/"))
                if status == DONE:
                    continue
                where = origin or f"message {message_id}"
                if status == FAILED:
                    why = error or where  # a failure's error names where it came from
                elif status == PENDING:
                    why = f"{where}: waits: {error}"
                else:
                    why = f"{where}: {error}" if error else f"{where}: still {status}"
                summary.not_done.append((status, why))
        summary.count(counts)

    def retry(self, ids: list[int]) -> list[int]:
        reopened = self.store.reopen(ids, event=Event.RETRY)
        self.dispatcher.submit(reopened)
        return reopened

    def replay(self, ids: list[int]) -> list[int]:
        """Run stored messages again through the current mappings (idempotent)."""
        reopened = self.store.reopen(ids, event=Event.REPLAY)
        self.dispatcher.submit(reopened)
        return reopened
