"""Stopping a request's statements from another thread: its client went away, or time is up.

The thread running a search is blocked in the database driver; only the
connection can stop it (psycopg's `cancel_safe()`, sqlite3's `interrupt()`).
A store registers how to stop the connection while it runs statements for
the request (`watching`); the API calls `cancel()` from the event loop when
the client disconnects.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("hub.store")
REPEAT = 0.05


class Cancellation:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stops: dict[int, Callable[[], None]] = {}
        self.cancelled = False
        # When the searches of this request must have ended (time.monotonic()), when several
        # share one time limit: the entries of a batch or transaction Bundle.
        self.deadline: float | None = None

    def cancel(self) -> None:
        """Stop the statements running for this request, and refuse the next ones.

        Until every block watching ends, the stops are repeated every `REPEAT` seconds: a
        statement that was about to start when the first came (being compiled) is stopped too.
        They run under the lock that ends a block: a connection is not handed back to the pool,
        and to another request, while a stop is on its way to it.
        """
        with self._lock:
            if self.cancelled:
                return
            self.cancelled = True
        while True:
            with self._lock:
                if not self._stops:
                    return
                for stop in list(self._stops.values()):
                    try:
                        stop()
                    except Exception:  # a connection already closed: nothing left to stop
                        log.warning("could not cancel a statement", exc_info=True)
            time.sleep(REPEAT)

    @contextmanager
    def watching(self, stop: Callable[[], None]) -> Iterator[None]:
        """While the block runs, `cancel()` calls `stop` (from the cancelling thread)."""
        key = id(stop)
        with self._lock:
            self._stops[key] = stop
        try:
            yield
        finally:
            with self._lock:
                self._stops.pop(key, None)


__all__ = ["Cancellation"]
