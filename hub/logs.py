"""Logging for every hub process: one format (text or JSON lines), and the request id.

The API sets `request_id` for each request (`hub.api.observe`); every line logged
while that request is served, in the event loop or in a worker thread, carries
it, so the lines of one request can be found together. Lines say what happened
to which id, never the content: resources and raw messages hold PHI.
"""

from __future__ import annotations

import logging
import logging.config
import traceback
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

FORMATS = ("text", "json")
_TEXT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class RequestId(logging.Filter):
    """Puts the current request id (or "-") on every record as `request_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get() or "-"
        return True


class JsonLines(logging.Formatter):
    """One JSON object a line: time, level, logger, message, request id, and the
    exception when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id.get(),
        }
        if record.exc_info:
            line["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return orjson.dumps(line, default=str).decode()


def config(level: str = "info", fmt: str = "text") -> dict[str, Any]:
    """A `logging.config.dictConfig` for the hub's loggers and those of the servers it
    runs in (uvicorn, Celery), which uvicorn takes as its `log_config` too."""
    if fmt not in FORMATS:
        raise ValueError(f"log format '{fmt}' is not one of {', '.join(FORMATS)}")
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JsonLines"} if fmt == "json" else {"format": _TEXT}
    )
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "hub",
        "filters": ["request_id"],
        "stream": "ext://sys.stderr",
    }
    named = {"level": level.upper(), "handlers": ["hub"], "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": f"{__name__}.RequestId"}},
        "formatters": {"hub": formatter},
        "handlers": {"hub": handler},
        "root": {"level": level.upper(), "handlers": ["hub"]},
        "loggers": {name: dict(named) for name in ("hub", "uvicorn", "uvicorn.error", "celery")}
        | {
            # uvicorn's access log names client addresses and full paths (query strings can
            # hold names): the hub logs its own request lines instead.
            "uvicorn.access": {"level": "WARNING", "handlers": ["hub"], "propagate": False},
            # /readyz reads the revision through Alembic, which says so at INFO each time.
            "alembic": {"level": "WARNING", "handlers": ["hub"], "propagate": False},
        },
    }


def configure(level: str = "info", fmt: str = "text") -> None:
    logging.config.dictConfig(config(level, fmt))
