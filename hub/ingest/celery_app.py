"""The Celery app: the broker, the queues, the routes and the beat schedule.

Dispatchers send work through it by task name; the tasks themselves (`hub.tasks`)
are the workers' entry point, which builds the hub's parts, so nothing here
imports them: a worker loads them through `include`.
"""

from __future__ import annotations

from celery import Celery

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
