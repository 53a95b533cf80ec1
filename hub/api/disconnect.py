"""Noticing that a client went away while its request runs, and stopping its searches.

A search runs in a request thread, blocked in the database driver; when its
client disconnects, nobody will read the answer, but the statement would run
on, holding the thread and a pooled connection. `cancel_when_gone` waits for
the ASGI `http.disconnect` message and then cancels the request's
`Cancellation`, which stops the statement on its connection.
"""

from __future__ import annotations

import threading

from starlette.requests import Request

from hub.store.cancel import Cancellation


async def cancel_when_gone(http: Request, cancellation: Cancellation) -> None:
    """Run beside the request, after its body was read; cancelled when the request ends."""
    while (await http.receive())["type"] != "http.disconnect":
        pass  # the rest of a body the route did not read
    # psycopg's cancel waits for the server: neither on the event loop, nor in the request
    # threads, which slow searches may all be holding.
    threading.Thread(target=cancellation.cancel, name="hub-cancel", daemon=True).start()
