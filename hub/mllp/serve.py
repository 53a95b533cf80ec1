"""Running the MLLP listener: beside the API in `hub serve`, or alone in `hub mllp`.

Beside the API it shares the app's receiver (`app.state.hl7v2`), so that messages from
MLLP and from `POST /hl7v2` are committed in the same groups. Alone, it builds the
hub's parts itself: in the embedded mode (no broker) it processes what it receives
with its own threads and sweeper, as `hub serve` does; with a broker, workers do.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from typing import Any

from adapters.hl7v2.receive import build_receiver
from hub.assembly import build_context, ingest_service
from hub.mllp.listener import Listener
from hub.settings import Settings

log = logging.getLogger("hub.mllp")

SWITCH_INTERVAL = 0.001  # seconds


def listener_for(receiver: Any, settings: Settings, host: str | None = None) -> Listener:
    return Listener(
        receiver,
        host or settings.mllp_host,
        settings.mllp_port,
        max_frame=settings.mllp_max_frame_bytes,
        idle_timeout=settings.mllp_idle_seconds,
        # Several API worker processes each listen on the port; the kernel spreads
        # connections between them.
        reuse_port=settings.workers > 1,
        grace=settings.shutdown_seconds,
    )


def companion(settings: Settings) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """For `create_app(companions=...)`: the listener, over the app's receiver."""

    @asynccontextmanager
    async def listening(app: Any) -> AsyncIterator[None]:
        receiver = app.state.hl7v2
        if receiver is None:
            log.warning("the hl7v2 adapter is not enabled (HUB_ADAPTERS): no MLLP listener")
            yield
            return
        listener = listener_for(receiver, settings)
        await listener.start()
        # The interpreter's switch interval is left as it is here (see `run`): beside the
        # API it would trade the request threads' throughput for the ACKs' tail, unmeasured.
        try:
            yield
        finally:
            await listener.close()

    return listening


async def run(settings: Settings, ready: Callable[[Listener], None] | None = None) -> None:
    """`hub mllp`: the listener alone, until SIGINT or SIGTERM."""
    # The commit and dispatch threads hold the GIL up to the switch interval (5 ms by
    # default) while the event loop waits to write ACKs: a shorter one cuts the tail.
    sys.setswitchinterval(SWITCH_INTERVAL)
    ctx = build_context(settings)
    service = ingest_service(settings, ctx)
    receiver = build_receiver(service, settings)
    listener = listener_for(receiver, settings)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if service.mode == "threads":
            service.start_sweeper()
            stale = await asyncio.to_thread(service.store.stale, timedelta(0))
            service.dispatcher.submit(stale)
        await listener.start()
        if ready is not None:
            ready(listener)
        await stop.wait()
    finally:
        await listener.close()
        await receiver.close()
        await asyncio.to_thread(service.close)
        await asyncio.to_thread(ctx.repo.close)
