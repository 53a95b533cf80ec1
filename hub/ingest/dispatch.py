"""Delivering message ids to the pipeline: Celery, an embedded thread pool, or inline.

Delivery is never the record: the message store is. Whatever a dispatcher
loses (a killed worker, a restarted broker), the sweeper finds again as an
open message that has not moved for a while, and sends it once more. A message
still `received` is only waiting for a worker while the dispatcher holds a
backlog: the sweeper re-sends those once the backlog is gone (a restarted
broker has none), and stale `processing` ones (a worker died on them) at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Protocol

from hub.ingest.messages import PENDING, PROCESSING, RECEIVED, WAITING, MessageStore, now
from hub.ingest.pipeline import Outcome, Pipeline

log = logging.getLogger("hub.ingest")


def backoff(attempt: int) -> float:
    """Seconds before retry `attempt`: 1, 2, 4, … capped at a minute."""
    return float(min(60, 2 ** max(0, attempt - 1)))


def follow(
    pipeline: Pipeline, message_id: int, resend: Callable[[int], None], limit: int = 200
) -> int:
    """After `message_id` is finished, process the messages about the same subject that
    waited for it, in order; answer how many.

    A message that finds an earlier one about its subject still open is `DEFERRED` and
    dropped by its worker, not retried on a timer (which, with a feed's rows of one
    patient side by side, kept every other worker busy retrying): the worker that
    finishes the earlier message carries on with it here. One that must be retried goes
    back to the dispatcher (`resend`), and so does the next one after `limit` (a task stays
    short). Should this worker die, the sweeper sends the head of the line again.
    """
    done, current = 0, message_id
    while True:
        following = pipeline.next_in_order(current)
        if following is None:
            return done
        if done >= limit:
            resend(following)
            return done
        outcomes = pipeline.process_many([following])
        for released in outcomes.released:
            resend(released)
        outcome = outcomes[following]
        if outcome == Outcome.RETRY:
            resend(following)
            return done
        if outcome in (Outcome.DEFERRED, Outcome.SKIPPED, Outcome.PENDING):
            # Another worker has it, and follows it; or it waits for a reference, and the
            # line about its subject waits behind it (it is followed once it is written).
            return done
        done += 1
        current = following


def follow_many(
    pipeline: Pipeline, finished: Sequence[int], resend: Callable[[int], None], limit: int = 200
) -> int:
    """`follow` for a batch: after its messages finished, the ones that waited for them."""
    done = 0
    for head in pipeline.next_in_order_many(finished):
        outcomes = pipeline.process_many([head])
        for released in outcomes.released:
            resend(released)
        outcome = outcomes[head]
        if outcome == Outcome.RETRY:
            resend(head)
        elif outcome not in (Outcome.DEFERRED, Outcome.SKIPPED, Outcome.PENDING):
            done += 1 + follow(pipeline, head, resend, limit)
    return done


def process_batch(
    pipeline: Pipeline, message_ids: Sequence[int], resend: Callable[[int], None]
) -> dict[int, Outcome]:
    """A batch, then what follows it: those to retry go to `resend`, so do the pending
    messages it released (it wrote what they waited for), and the messages that waited
    for the finished ones are processed (`follow_many`)."""
    outcomes = pipeline.process_many(message_ids)
    for message_id, outcome in outcomes.items():
        if outcome == Outcome.RETRY:
            resend(message_id)
    for message_id in outcomes.released:
        resend(message_id)
    finished = [
        m
        for m, o in outcomes.items()
        if o not in (Outcome.RETRY, Outcome.DEFERRED, Outcome.PENDING)
    ]
    follow_many(pipeline, finished, resend)
    return outcomes


def chunks(message_ids: Sequence[int], size: int) -> list[list[int]]:
    """Ids in id order, `size` at a time: what one task processes in one transaction."""
    ordered = sorted(message_ids)
    return [ordered[i : i + size] for i in range(0, len(ordered), max(1, size))]


_UNFINISHED = (Outcome.RETRY, Outcome.DEFERRED, Outcome.PENDING)


class Dispatcher(Protocol):
    def submit(self, message_ids: Sequence[int]) -> None: ...

    def backlog(self) -> int:
        """Work sent and not yet taken by a worker: messages, or tasks of several (0 when
        unknown); the sweeper only asks whether there is any."""
        ...

    def check(self, timeout: float) -> None:
        """Raises when what carries the work (the broker) does not answer in `timeout`
        seconds; for /readyz."""
        ...

    def close(self) -> None: ...


class InlineDispatcher:
    """Processes at once, in the caller's thread (`hub ingest` without a broker, tests)."""

    def __init__(
        self, pipeline: Pipeline, sleep: Callable[[float], None] = time.sleep, batch: int = 100
    ) -> None:
        self.pipeline = pipeline
        self.sleep = sleep
        self.batch = batch

    def submit(self, message_ids: Sequence[int]) -> None:
        pending = list(message_ids)
        rounds = 0
        woken: set[int] = set()  # released from waiting for a reference by this call
        while pending:
            later, deferred, moved = [], [], False
            outcomes: dict[int, Outcome] = {}
            released: list[int] = []
            for chunk in chunks(pending, self.batch):
                done = self.pipeline.process_many(chunk)
                outcomes.update(done)
                released += done.released
            later += [m for m in released if m not in outcomes]
            moved = moved or bool(released)
            # Behind a message that waited for a reference, the later ones about its subject
            # waited too: once it is written, they go on (no sweeper runs in this mode).
            finished = [m for m in woken if outcomes.get(m) not in (None, *_UNFINISHED)]
            later += [m for m in self.pipeline.next_in_order_many(finished) if m not in later]
            woken = (woken - set(finished)) | set(released)
            for message_id in pending:
                outcome = outcomes[message_id]
                if outcome in (Outcome.RETRY, Outcome.DEFERRED):
                    later.append(message_id)
                    if outcome == Outcome.DEFERRED:
                        deferred.append(message_id)
                else:
                    moved = True
            if deferred:
                # Behind a pending message (it waits for a reference), a message stays
                # `waiting`: it is followed once that one is written, or its wait is over.
                blockers = {m: self.pipeline.blocking(m) for m in deferred}
                parked = self.pipeline.pending(sorted({b for bs in blockers.values() for b in bs}))
                behind = {m for m, bs in blockers.items() if bs and set(bs) <= parked}
                later = [m for m in later if m not in behind]
                deferred = [m for m in deferred if m not in behind]
            if deferred and not moved:
                # Each waits for an earlier message nobody is sending (no sweeper runs in this
                # mode, e.g. a killed `hub ingest` left it open): process that one first.
                blocking = {b for m in deferred for b in self.pipeline.blocking(m)}
                if blocking - set(later):
                    pending = sorted(blocking - set(later)) + later
                    continue
            pending = later
            rounds += 1
            if pending:
                self.sleep(min(backoff(rounds), 5))

    def backlog(self) -> int:
        return 0  # processed before `submit` returns

    def check(self, timeout: float) -> None:
        pass  # no broker: the work is done in this process

    def close(self) -> None:
        pass


class ThreadDispatcher:
    """The embedded mode: a pool of threads inside `hub serve`."""

    def __init__(self, pipeline: Pipeline, threads: int = 2, batch: int = 100) -> None:
        self.pipeline = pipeline
        self.batch = batch
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ingest")
        self._closed = False
        self._waiting = 0  # submitted to the pool, not started
        self._lock = threading.Lock()

    def submit(self, message_ids: Sequence[int]) -> None:
        for chunk in chunks(message_ids, self.batch):
            if self._closed:
                return
            with self._lock:
                self._waiting += len(chunk)
            self.pool.submit(self._run_many, chunk)

    def _run_many(self, message_ids: list[int]) -> None:
        with self._lock:
            self._waiting -= len(message_ids)
        try:
            process_batch(self.pipeline, message_ids, lambda m: self._schedule(m, backoff(1), 2))
        except Exception:  # the sweeper will send what is left
            log.exception("processing messages %s..%s failed", message_ids[0], message_ids[-1])

    def _schedule(self, message_id: int, delay: float, round_: int) -> None:
        if self._closed:
            return
        if delay:
            timer = threading.Timer(delay, self._schedule, (message_id, 0.0, round_))
            timer.daemon = True
            timer.start()
            return
        with self._lock:
            self._waiting += 1
        self.pool.submit(self._run, message_id, round_)

    def backlog(self) -> int:
        with self._lock:
            return self._waiting

    def check(self, timeout: float) -> None:
        if self._closed:
            raise RuntimeError("the ingest thread pool is shut down")

    def _run(self, message_id: int, round_: int) -> None:
        with self._lock:
            self._waiting -= 1
        try:
            outcomes = self.pipeline.process_many([message_id])
        except Exception:  # the sweeper will send it again
            log.exception("processing message %s failed", message_id)
            return
        self.submit(outcomes.released)
        outcome = outcomes[message_id]
        if outcome == Outcome.RETRY:
            self._schedule(message_id, backoff(round_), round_ + 1)
        elif outcome not in (Outcome.DEFERRED, Outcome.PENDING):  # see `follow`
            try:
                follow(self.pipeline, message_id, lambda m: self._schedule(m, backoff(1), 2))
            except Exception:  # the sweeper will send what is left
                log.exception("processing the messages after %s failed", message_id)

    def close(self) -> None:
        self._closed = True
        self.pool.shutdown(wait=True, cancel_futures=False)


class CeleryDispatcher:
    """Production: hand ids to Celery workers through the broker, `batch` to a task."""

    def __init__(self, batch: int = 100) -> None:
        self.batch = batch

    def submit(self, message_ids: Sequence[int]) -> None:
        # Sent by name: the tasks are the workers' entry point, above this module.
        from hub.ingest.celery_app import PROCESS_MESSAGE, PROCESS_MESSAGES, app

        for chunk in chunks(message_ids, self.batch):
            if len(chunk) == 1:
                app.send_task(PROCESS_MESSAGE, (chunk[0],))
            else:
                app.send_task(PROCESS_MESSAGES, (chunk,))

    def backlog(self) -> int:
        from kombu.exceptions import ChannelError

        from hub.ingest.celery_app import MESSAGE_QUEUE, app

        try:
            with app.connection_for_read() as conn:
                declared = conn.default_channel.queue_declare(queue=MESSAGE_QUEUE, passive=True)
                return int(declared.message_count)
        except ChannelError:  # Redis keeps no empty list: the queue is empty
            return 0
        except Exception as e:  # no broker to ask: treat every stale message as lost
            log.warning("could not read the broker's queue length: %s", e)
            return 0

    def check(self, timeout: float) -> None:
        from hub.ingest.celery_app import app

        with app.connection_for_write(connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)

    def close(self) -> None:
        pass


# While the dispatcher has a backlog, a `received` message is re-sent after this many stale
# periods (a lost task behind a feed that never lets the queue empty).
LOST_AFTER = 10


def sweep(store: MessageStore, dispatcher: Dispatcher, stale_after: timedelta) -> int:
    """Fail the pending messages whose wait for a reference is over (`expire`), then send
    again what was left open (`resend`); answer how many were sent."""
    expired = store.expire(now())
    if expired:
        log.info("%s messages stopped waiting for a reference: failed", len(expired))
    # The line about an expired message's subject waited behind it: it goes on now.
    following = store.first_open_about(expired)
    if following:
        dispatcher.submit(following)
    return len(following) + resend(store, dispatcher, stale_after)


def resend(store: MessageStore, dispatcher: Dispatcher, stale_after: timedelta) -> int:
    """Send again the open messages that have not moved for `stale_after`.

    `processing` ones (a worker took them and did not finish), always. `waiting` ones (left
    for the worker finishing an earlier message, see `follow`) once every earlier one is
    finished: that worker died before it went on. `received` ones when the dispatcher has
    no backlog; while it has one, they are most likely queued, and only those left for
    `LOST_AFTER` stale periods are sent.
    """
    ids = store.claim_stale(stale_after, statuses=(PROCESSING,))
    ids += store.claim_stale(stale_after, statuses=(WAITING,), unfollowed=True)
    # A pending message looks again: what it waits for may have been written while it was
    # being made pending (in another transaction, which could not release it).
    ids += store.claim_stale(stale_after, statuses=(PENDING,))
    if dispatcher.backlog():
        ids += store.claim_stale(stale_after * LOST_AFTER, statuses=(RECEIVED, WAITING))
    else:
        ids += store.claim_stale(stale_after, statuses=(RECEIVED,))
    ids.sort()
    if ids:
        dispatcher.submit(ids)
        log.info("sweeper re-sent %s messages", len(ids))
    return len(ids)


class Sweeper(threading.Thread):
    """The embedded mode's periodic sweep (Celery beat runs it in production)."""

    def __init__(
        self, store: MessageStore, dispatcher: Dispatcher, stale_after: timedelta, every: float
    ) -> None:
        super().__init__(name="ingest-sweeper", daemon=True)
        self.store, self.dispatcher = store, dispatcher
        self.stale_after, self.every = stale_after, every
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            try:
                sweep(self.store, self.dispatcher, self.stale_after)
            except Exception:
                log.exception("sweep failed")

    def stop(self) -> None:
        self.stopped.set()
