"""The Celery workers' tasks: ids in, the pipeline does the work.

Tasks are idempotent and acknowledged late (a worker killed mid-task leaves
the task to be delivered again); retries only on transient errors, with
backoff. The beat schedule runs the sweeper, which re-sends messages left open.
The app, its queues and the task names are in `hub.ingest.celery_app`; this
module is an entry point, like the API and the command line: it gets the hub's
parts from `hub.assembly`.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from functools import cache
from typing import Any

from hub.ingest.celery_app import PROCESS_MESSAGE, PROCESS_MESSAGES, SWEEP, app, settings


@cache
def service() -> Any:
    """The worker's ingestion service, built once per worker process."""
    from hub.assembly import ingest_service, settle

    built = ingest_service(settings, dispatcher="celery")
    settle()
    return built


@app.task(bind=True, name=PROCESS_MESSAGE, max_retries=None)
def process_message(self: Any, message_id: int) -> str:
    from hub.ingest.dispatch import backoff, follow
    from hub.ingest.pipeline import Outcome

    pipeline = service().pipeline
    outcomes = pipeline.process_many([message_id])
    for released in outcomes.released:  # it wrote what these waited for
        process_message.apply_async((released,), countdown=backoff(1))
    outcome = outcomes[message_id]
    if outcome == Outcome.RETRY:
        raise self.retry(countdown=backoff(self.request.retries + 1))
    # A deferred one is followed by its predecessor's worker; a pending one, once written.
    if outcome not in (Outcome.DEFERRED, Outcome.PENDING):
        try:
            follow(
                pipeline,
                message_id,
                lambda m: process_message.apply_async((m,), countdown=backoff(1)),
            )
        except Exception as e:  # again: the message is done (skipped), its line followed
            raise self.retry(countdown=backoff(self.request.retries + 1), exc=e) from e
    return str(outcome)


@app.task(bind=True, name=PROCESS_MESSAGES, max_retries=None)
def process_messages(self: Any, message_ids: list[int]) -> dict[str, int]:
    """Several messages in one transaction (see `Pipeline.process_many`)."""
    from hub.ingest.dispatch import backoff, process_batch

    def resend(message_id: int) -> None:
        process_message.apply_async((message_id,), countdown=backoff(1))

    try:
        outcomes = process_batch(service().pipeline, message_ids, resend)
    except Exception as e:  # idempotent: what is done is skipped the next time
        raise self.retry(countdown=backoff(self.request.retries + 1), exc=e) from e
    return dict(Counter(str(o) for o in outcomes.values()))


@app.task(name=SWEEP)
def sweep_task() -> int:
    from hub.ingest.dispatch import sweep

    svc = service()
    return sweep(svc.store, svc.dispatcher, timedelta(seconds=settings.ingest_stale_seconds))
