"""No positive ACK without a commit: the listener over a PostgreSQL server of the test's
own (initdb, pg_ctl on a free port), which the test stops while a sender sends. The
shared server is never touched."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from live_server import free_port

from hub.assembly import build_context
from hub.ingest.service import IngestService
from hub.settings import Settings
from hub.store.migrate import upgrade
from tests.conftest import MIGRATIONS
from tests.ingest_fixtures import hold
from tests.mllp_fixtures import adt, err, listening, msa

BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


def _as_postgres(*command: str) -> list[str]:
    """initdb refuses to run as root: run the server's tools as the postgres user then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return list(command)


class Server:
    def __init__(self, data: Path, port: int) -> None:
        self.data, self.port = data, port
        self.bin = Path(BIN[-1])

    def ctl(self, *args: str) -> None:
        subprocess.run(
            _as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", *args),
            check=True,
            # The server's output goes to its log: a pipe would be held open by it.
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )

    def start(self) -> None:
        self.ctl(
            "-l",
            str(self.data / "server.log"),
            "-o",
            f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1",
            "start",
        )

    def stop(self) -> None:
        self.ctl("-m", "fast", "stop")


@pytest.fixture()
def own_postgres() -> Iterator[Server]:
    if not BIN or (shutil.which("runuser") is None and os.geteuid() == 0):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    # Not under pytest's tmp_path: as root that is a folder the postgres user cannot enter.
    top = Path(tempfile.mkdtemp(prefix="hub-pg-"))
    data = top / "pg"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(top, "postgres")
        shutil.chown(data, "postgres")
    subprocess.run(
        _as_postgres(
            str(Path(BIN[-1]) / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        ),
        check=True,
        capture_output=True,
        timeout=120,
    )
    server = Server(data, free_port())
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # stopped already
            server.stop()
        shutil.rmtree(top, ignore_errors=True)


def test_no_positive_ack_while_the_store_cannot_commit(own_postgres: Server) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{own_postgres.port}/postgres"
    upgrade(url, MIGRATIONS)
    settings = Settings(database_url=url, db_pool_timeout_seconds=2)
    service = IngestService(build_context(settings), settings, dispatcher="inline")
    hold(service)
    try:
        with listening(service, settings) as served, served.client() as client:
            assert msa(client.send_message(adt("before")))[0] == "AA"
            own_postgres.stop()
            refused = client.send_message(adt("during"))
            assert msa(refused)[:2] == ["AR", "during"]  # never AA: the sender keeps it
            assert "207^Application internal error" in err(refused)[0]
            own_postgres.start()
            # The sender sends again until it is acknowledged (the pool's first use of a
            # connection from before the restart may fail once more).
            for _ in range(20):
                code = msa(client.send_message(adt("during")))[0]
                if code == "AA":
                    break
                time.sleep(0.25)
            assert code == "AA"
            assert msa(client.send_message(adt("during")))[0] == "AA"  # a resend again
        during = [m for m in service.store.find() if m.external_id.endswith("|during")]
        assert len(during) == 1 and during[0].raw == adt("during")
        assert len(service.store.find()) == 2
    finally:
        service.close()
        service.ctx.repo.close()
