"""The Celery app: the broker, the queues, the routes and the beat schedule.

Dispatchers send work through it by task name; the tasks themselves (`hub.tasks`)
are the workers' entry point, which builds the hub's parts, so nothing here
imports them: a worker loads them through `include`.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals

from hub import logs
from hub.settings import get_settings

MESSAGE_QUEUE = "celery"  # Celery's default queue: process_message tasks
SWEEP_QUEUE = "hub.sweep"  # the sweep, which must not wait behind a backlog of messages
# The names tasks are sent by. They keep the module they were first defined in, so that
# tasks queued by an earlier version are still understood.
PROCESS_MESSAGE = "hub.ingest.tasks.process_message"
PROCESS_MESSAGES = "hub.ingest.tasks.process_messages"
SWEEP = "hub.ingest.tasks.sweep_task"

settings = get_settings()
app = Celery("hub", broker=settings.broker_url or "redis://127.0.0.1:6379/0", include=["hub.tasks"])
app.conf.update(
    task_default_queue=MESSAGE_QUEUE,
    task_routes={SWEEP: {"queue": SWEEP_QUEUE}},
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    broker_transport_options={"visibility_timeout": 3600},
    task_ignore_result=True,
    beat_schedule={
        "sweep": {"task": SWEEP, "schedule": settings.ingest_sweep_seconds},
    },
)


@signals.setup_logging.connect
def _hub_logging(loglevel: Any = None, **_: Any) -> None:
    """Workers and beat log as the API does (HUB_LOG_FORMAT), not in Celery's own format."""
    level = logging.getLevelName(loglevel) if isinstance(loglevel, int) else loglevel
    logs.configure(str(level or settings.log_level).lower(), settings.log_format)


@signals.task_prerun.connect
def _task_id(task_id: str | None = None, **_: Any) -> None:
    # A task's lines carry its id, as a request's carry the request id.
    logs.request_id.set(f"task-{task_id}" if task_id else None)


@signals.task_postrun.connect
def _task_done(**_: Any) -> None:
    logs.request_id.set(None)
