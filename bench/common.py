"""What the benchmarks share: servers in their own process groups, the bench database, and
what the output says about the machine and the code measured."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
FHIR_JSON = "application/fhir+json"


# --- processes -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return int(response.status), response.read()


class Server:
    """A process in its own process group (a uvicorn server, a Celery worker), stopped with
    everything it spawned. `port` 0: it serves no HTTP."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        port: int,
        log: Path,
        env: Mapping[str, str],
        cwd: Path = ROOT,
    ) -> None:
        self.name, self.port, self.log = name, port, log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=dict(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if http_get(self.base + "/healthz", timeout=1.0)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        tail = self.log.read_text(errors="replace")[-2000:]
        raise SystemExit(f"{self.name} did not start on port {self.port}:\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


def start_hub(url: str, workers: int, log: Path, cwd: Path = ROOT) -> Server:
    """`hub serve` on `url` (none of the caller's HUB_* settings), ready to answer.

    `cwd` is where the hub is imported from: a snapshot of other code can be measured."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env["HUB_MLLP_ENABLED"] = "false"  # the HTTP benchmarks need no MLLP listener
    argv = [
        sys.executable, "-m", "hub.cli", "serve", "--host", HOST, "--port", str(port),
        "--workers", str(workers), "--database-url", url, "--log-level", "warning",
    ]  # fmt: skip
    server = Server("hub", argv, port, log, env, cwd)
    server.wait_ready()
    return server


@contextmanager
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="hub-bench-") as name:
        yield Path(name)


# --- the bench database ----------------------------------------------------------------------


def libpq_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _admin_url(url: str) -> tuple[str, str]:
    """The server's `postgres` database, from which `url`'s database is dropped; its name."""
    parts = urlsplit(libpq_url(url))
    return urlunsplit(parts._replace(path="/postgres")), parts.path.lstrip("/")


def recreate_database(url: str) -> None:
    """Drop, create and migrate (`hub db upgrade`) the bench's own database."""
    admin, name = _admin_url(url)
    if "bench" not in name:
        raise SystemExit(
            f"refusing to drop database '{name}': the bench database's name must contain 'bench'"
        )
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    subprocess.run(
        [sys.executable, "-m", "hub.cli", "db", "upgrade", "--database-url", url],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )


def drop_database(url: str) -> None:
    admin, name = _admin_url(url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def checkpoint(url: str) -> None:
    """Start every measurement with no dirty buffers from the one before."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("CHECKPOINT")


# --- what was measured, where ----------------------------------------------------------------


def revision() -> str:
    """The code measured: commit, and whether the work tree differs from it."""
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def idle_share(seconds: float = 1.0) -> float:
    """Share of CPU time idle over `seconds` (Linux /proc/stat; 1.0 elsewhere)."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except OSError:
        return 1.0
    return (idle1 - idle0) / max(1, total1 - total0)


# --- a minimal HTTP/1.1 keep-alive client ----------------------------------------------------
# Load generators in the bench's own event loop: an HTTP library's per-request cost would be
# measured along with the hub's.


def raw_request(method: str, path: str, body: bytes | None = None, headers: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nAccept: {FHIR_JSON}\r\n{headers}"
    if body is None:
        return (head + "\r\n").encode()
    head += f"Content-Type: {FHIR_JSON}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bool]:
    """Send one request; its status and whether it carried Retry-After."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, retry_after = 0, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"retry-after":
            retry_after = True
        elif name == b"transfer-encoding":
            raise RuntimeError("this client reads Content-Length bodies only")
    if length:
        await reader.readexactly(length)
    return status, retry_after
