"""Running the MLLP listener: beside the API in `hub serve`, or alone in `hub mllp`.

Beside the API it shares the app's receiver (`app.state.hl7v2`), so that messages from
MLLP and from `POST /hl7v2` are committed in the same groups. Alone, it builds the
hub's parts itself: in the embedded mode (no broker) it processes what it receives
with its own threads and sweeper, as `hub serve` does; with a broker, workers do.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from typing import Any

from adapters.hl7v2.receive import build_receiver
from hub.assembly import build_context, ingest_service, settle
from hub.mllp.listener import Listener
from hub.settings import Settings

log = logging.getLogger("hub.mllp")

SWITCH_INTERVAL = 0.001  # seconds


def listener_for(
    receiver: Any, settings: Settings, host: str | None = None, *, processes: int = 1
) -> Listener:
    return Listener(
        receiver,
        host or settings.mllp_host,
        settings.mllp_port,
        max_frame=settings.mllp_max_frame_bytes,
        idle_timeout=settings.mllp_idle_seconds,
        # Several processes (API workers, or `hub mllp --processes`) each listen on the
        # port; the kernel spreads connections between them.
        reuse_port=max(settings.workers, processes) > 1,
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


async def run(
    settings: Settings,
    ready: Callable[[Listener], None] | None = None,
    *,
    processes: int = 1,
) -> None:
    """`hub mllp`: the listener alone, until SIGINT or SIGTERM. With `processes` > 1 this
    is one of that many processes on the port (`supervise` starts the others)."""
    # The commit and dispatch threads hold the GIL up to the switch interval (5 ms by
    # default) while the event loop waits to write ACKs: a shorter one cuts the tail.
    sys.setswitchinterval(SWITCH_INTERVAL)
    ctx = build_context(settings)
    service = ingest_service(settings, ctx)
    receiver = build_receiver(service, settings)
    listener = listener_for(receiver, settings, processes=processes)
    # What was built (maps, registries, models, the broker's client) stays for the
    # process's life: out of the collector's full passes, which would otherwise stall the
    # ACKs now and then. The broker connection is made first, so that its modules are too.
    try:
        await asyncio.to_thread(service.dispatcher.check, settings.readiness_timeout_seconds)
    except Exception as e:  # not fatal: messages are stored, and sent once it is back
        log.warning("the broker cannot be reached yet: %s", e)
    settle()
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


# A listener process that exits on its own is started again, at most this often (seconds).
RESTART_EVERY = 5.0


class Siblings:
    """The other `hub mllp` processes of a `--processes N` listener: started as the same
    command with one process each, on the same port, stopped (SIGTERM, then SIGKILL after
    the shutdown grace) when this one stops, and started again if one exits on its own."""

    def __init__(self, count: int, settings: Settings) -> None:
        self.count, self.settings = count, settings
        self.procs: list[subprocess.Popen[bytes]] = []
        self.started: list[float] = []

    def _spawn(self) -> subprocess.Popen[bytes]:
        # The same settings (HUB_MLLP_PROCESSES included: it binds with SO_REUSEPORT too),
        # as a sibling: it starts no others.
        argv = [sys.executable, "-m", "hub.cli", "mllp", "--sibling"]
        return subprocess.Popen(argv, env=dict(os.environ))

    def start(self) -> None:
        for _ in range(self.count):
            self.procs.append(self._spawn())
            self.started.append(time.monotonic())

    def check(self) -> None:
        for i, proc in enumerate(self.procs):
            code = proc.poll()
            if code is not None and time.monotonic() - self.started[i] >= RESTART_EVERY:
                log.error("MLLP listener process %s exited (%s): starting it again", proc.pid, code)
                self.procs[i] = self._spawn()
                self.started[i] = time.monotonic()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_seconds + 5
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("MLLP listener process %s did not stop in time: killed", proc.pid)
                proc.kill()
                proc.wait(timeout=5)


async def supervise(
    settings: Settings,
    processes: int,
    ready: Callable[[Listener], None] | None = None,
    *,
    sibling: bool = False,
) -> None:
    """`hub mllp --processes N`: this process listens, and N - 1 others on the same port
    (none when this one is a `sibling`, started by another)."""
    if sibling:
        await run(settings, ready, processes=processes)
        return
    if processes > 1 and settings.mllp_port == 0:
        raise ValueError("several MLLP listener processes need a fixed port (HUB_MLLP_PORT)")
    siblings = Siblings(processes - 1, settings)

    async def watch() -> None:
        while True:
            await asyncio.sleep(1)
            siblings.check()

    def started(listener: Listener) -> None:
        siblings.start()  # once this one holds the port: a wrong port fails here first
        if ready is not None:
            ready(listener)

    watcher = asyncio.get_running_loop().create_task(watch()) if processes > 1 else None
    try:
        await run(settings, started if processes > 1 else ready, processes=processes)
    finally:
        if watcher is not None:
            watcher.cancel()
        await asyncio.to_thread(siblings.stop)
