"""Group commit: units pushed by many senders at once, committed together.

A feed that pushes messages one by one (HL7 v2 over MLLP or HTTP) may acknowledge a
message only once its raw bytes are committed. A transaction per message would make
the commit the bottleneck; a group commit keeps the same promise for every message at
a fraction of the cost: units submitted from every connection while a commit is under
way (or within `window` seconds of the first) are committed in the next transaction,
in the order they were submitted, and each submitter is answered once it is durable.
If the transaction fails, every submitter of the group gets `StoreUnavailable` and
must not acknowledge positively: the sender sends again.

The commits run in one thread of their own: the event loop never waits for the
database, and groups are committed one after the other, so that the messages of one
connection are stored in the order they came. New messages are handed to the
dispatcher after their submitters are answered.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from hub.errors import Busy
from hub.ingest.dispatch import Dispatcher
from hub.ingest.messages import MessageStore
from hub.store.messages import Received as Received
from hub.store.messages import Unit

log = logging.getLogger("hub.ingest.receiver")

# How long received ids wait to be handed to the dispatcher with the next ones (seconds).
DISPATCH_DELAY = 0.05


class StoreUnavailable(Busy):
    """The message store could not commit the group: nothing of it is stored."""


@dataclass
class _Pending:
    unit: Unit
    order_key: str | None
    done: asyncio.Future[Received]


class GroupCommit:
    def __init__(
        self,
        store: MessageStore,
        dispatcher: Dispatcher,
        *,
        adapter: str,
        content_type: str | None,
        window: float = 0.0,
        max_group: int = 500,
    ) -> None:
        self.store, self.dispatcher = store, dispatcher
        self.adapter, self.content_type = adapter, content_type
        self.window, self.max_group = window, max_group
        self._queue: list[_Pending] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="group-commit")
        # Handing ids to the dispatcher (a broker round trip with Celery) must not hold
        # up the next commit: a thread of its own, which sends what piled up at once.
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="group-dispatch")
        self._to_send: list[int] = []
        self._to_send_lock = threading.Lock()
        self._closed = False
        self.groups = 0  # committed transactions, for the benchmark and tests

    def _start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="group-commit")

    async def submit(
        self, units: Sequence[Unit], order_keys: Sequence[str | None]
    ) -> list[Received]:
        """Commit `units` (in this order, with those of other submitters) under their order
        keys (the subject each is about); answer what became of each once they are durable.
        `StoreUnavailable` when the store could not commit them."""
        if self._closed:
            raise StoreUnavailable("the receiver is shutting down")
        if self._task is None or self._task.get_loop() is not asyncio.get_running_loop():
            self._start()  # first use, or an app served again on a new event loop
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        pending = [
            _Pending(u, k, loop.create_future()) for u, k in zip(units, order_keys, strict=True)
        ]
        self._queue.extend(pending)
        self._wake.set()
        return list(await asyncio.gather(*(p.done for p in pending)))

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            if self._closed and not self._queue:
                return
            if not self._closed:
                await self._wake.wait()
            self._wake.clear()
            if self.window and len(self._queue) < self.max_group:
                await asyncio.sleep(self.window)
            group, self._queue = self._queue[: self.max_group], self._queue[self.max_group :]
            if self._queue:
                self._wake.set()
            if not group:
                if self._closed:
                    return
                continue
            try:
                received = await loop.run_in_executor(self._thread, self._commit, group)
            except Exception as e:
                log.error("group commit of %s messages failed: %s", len(group), e)
                failure = StoreUnavailable(f"the message store cannot commit: {_short(e)}")
                for p in group:
                    if not p.done.done():
                        p.done.set_exception(failure)
                continue
            for p, r in zip(group, received, strict=True):
                if not p.done.done():
                    p.done.set_result(r)
            fresh = [
                r.id
                for p, r in zip(group, received, strict=True)
                if r.new and r.id is not None and p.unit.error is None
            ]
            if fresh:
                with self._to_send_lock:
                    idle = not self._to_send
                    self._to_send.extend(fresh)
                if idle:
                    self._sender.submit(self._dispatch)

    def _commit(self, group: list[_Pending]) -> list[Received]:
        received = self.store.receive(
            [p.unit for p in group],
            source=None,
            adapter=self.adapter,
            mapping=None,
            content_type=self.content_type,
            order_keys=[p.order_key for p in group],
        )
        self.groups += 1
        return received

    def _dispatch(self) -> None:
        # A task to the broker costs milliseconds whatever it carries: let the ids of a
        # few groups pile up, and send them as a few tasks (HUB_INGEST_BATCH ids each).
        time.sleep(DISPATCH_DELAY)
        with self._to_send_lock:
            ids, self._to_send = self._to_send, []
        try:
            self.dispatcher.submit(ids)
        except Exception:  # stored: the sweeper sends them
            log.exception("handing %s received messages to the dispatcher failed", len(ids))

    async def close(self) -> None:
        """Commit what was submitted, then stop."""
        self._closed = True
        if self._task is not None and self._wake is not None:
            self._wake.set()
            try:
                await asyncio.wait_for(self._task, timeout=30)
            except TimeoutError:
                self._task.cancel()
        self._thread.shutdown(wait=True)
        self._sender.shutdown(wait=True)


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]
