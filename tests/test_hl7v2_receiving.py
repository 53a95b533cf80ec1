"""HL7 v2 over HTTP (`POST /hl7v2`), files (`hub ingest --adapter hl7v2`), and the
listener of `hub serve` and `hub mllp` in real processes, with python-hl7's client."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import hl7.client
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from live_server import free_port

from adapters.hl7v2.framing import split_stream
from hub.cli import main
from hub.ingest.messages import FAILED, MessageStore
from hub.store import SqlRepository
from tests.mllp_fixtures import SAMPLES, adt, err, msa


def test_post_hl7v2_answers_the_ack(client: TestClient, repo: SqlRepository) -> None:
    r = client.post("/hl7v2", content=adt("H1"), headers={"content-type": "application/hl7-v2"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/hl7-v2")
    assert msa(r.content)[:2] == ["AA", "H1"]
    # text/plain, several messages (NE in MSH-15 still answered: HTTP has a body), \n ends
    body = (adt("H2", msh15="NE", msh16="AL") + adt("H3", event="ZZZ^Z01")).replace(b"\r", b"\n")
    r = client.post("/hl7v2", content=body, headers={"content-type": "text/plain"})
    acks = list(split_stream(io.BytesIO(r.content)))
    assert [msa(a)[:2] for a in acks] == [["CA", "H2"], ["AR", "H3"]]
    store = MessageStore(repo.engine)
    assert {m.external_id.rsplit("|", 1)[1]: m.status for m in store.find()}["H3"] == FAILED
    assert (
        client.post(
            "/hl7v2", content=b"{}", headers={"content-type": "application/json"}
        ).status_code
        == 415
    )
    assert (
        client.post("/hl7v2", content=b"", headers={"content-type": "text/plain"}).status_code
        == 400
    )


def test_ingest_files_with_mixed_framing_and_line_ends(
    repo: SqlRepository, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUB_DATABASE_URL", database_url)
    monkeypatch.delenv("HUB_BROKER_URL", raising=False)
    names = ["ADT_A01", "ORU_R01", "SIU_S12", "MDM_T02"]
    raws = [(SAMPLES / f"ig-{n}.hl7").read_bytes() for n in names]
    mixed = (
        raws[0].replace(b"\r", b"\r\n")
        + b"\x0b"
        + raws[1]
        + b"\x1c\r\n"
        + raws[2].replace(b"\r", b"\n")
        + b"\n\n"
        + raws[3]
    )
    path = tmp_path / "feed.hl7"
    path.write_bytes(mixed)
    result = CliRunner().invoke(main, ["ingest", "--adapter", "hl7v2", str(path)])
    assert "4 messages" in result.output + (result.stderr if result.stderr_bytes else "")
    stored = MessageStore(repo.engine).find()
    assert sorted(m.raw for m in stored) == sorted(raws)  # segments ended by \r, as sent
    assert {m.source for m in stored} == {"SndApp/SndFac", "LabApp/LabFac", "HIE/REDDING HOSPITAL"}
    assert all(m.mapping is None and m.adapter == "hl7v2" for m in stored)
    again = CliRunner().invoke(main, ["ingest", "--adapter", "hl7v2", str(path)])
    assert "(4 duplicates)" in again.output
    refused = CliRunner().invoke(
        main, ["ingest", "--adapter", "hl7v2", "--mapping", "x", str(path)]
    )
    assert refused.exit_code == 2


def _wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port}")


def _run(args: list[str], env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "hub.cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _wait_port(port, process)
    return process


def test_hub_serve_and_hub_mllp_listen(repo: SqlRepository, database_url: str) -> None:
    mllp_port, http_port = free_port(), free_port()
    env = {
        **os.environ,
        "HUB_DATABASE_URL": database_url,
        "HUB_MLLP_PORT": str(mllp_port),
        "HUB_PORT": str(http_port),
        "HUB_LOG_LEVEL": "warning",
    }
    env.pop("HUB_BROKER_URL", None)
    for args, control_id in ((["serve"], "serve-1"), (["mllp"], "mllp-1")):
        process = _run(args, env, mllp_port)
        try:
            with hl7.client.MLLPClient("127.0.0.1", mllp_port) as c:
                c.socket.settimeout(20)
                ack = c.send_message(adt(control_id))
                unknown = c.send_message(adt(control_id + "z", event="ZZZ^Z01"))
            assert msa(ack)[:2] == ["AA", control_id]
            assert msa(unknown)[0] == "AR" and "ZZZ" in err(unknown)[0]
        finally:
            process.terminate()
            assert process.wait(30) == 0 or process.returncode in (0, -15)
    raws = {m.raw for m in MessageStore(repo.engine).find()}
    assert adt("serve-1") in raws and adt("mllp-1") in raws


def test_a_reused_control_id_is_flagged_in_hub_messages_show(
    client: TestClient, repo: SqlRepository, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUB_DATABASE_URL", database_url)
    plain = {"content-type": "application/hl7-v2"}
    assert msa(client.post("/hl7v2", content=adt("F1"), headers=plain).content)[0] == "AA"
    other = client.post("/hl7v2", content=adt("F1", extra="^Else"), headers=plain).content
    assert msa(other)[0] == "AA" and "|205^" in err(other)[0]
    first, second = sorted(MessageStore(repo.engine).find(), key=lambda m: m.id)
    shown = CliRunner().invoke(main, ["messages", "show", str(second.id)])
    assert shown.exit_code == 0, shown.output
    assert f"conflictsWith: {first.id}" in shown.output


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_hub_mllp_processes_share_the_port_and_stop_together(
    repo: SqlRepository, database_url: str
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "HUB_DATABASE_URL": database_url,
        "HUB_MLLP_PORT": str(port),
        "HUB_LOG_LEVEL": "warning",
        "HUB_MLLP_PROCESSES": "3",
    }
    env.pop("HUB_BROKER_URL", None)
    process = _run(["mllp"], env, port)
    try:
        deadline = time.monotonic() + 60
        while len(_children(process.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        siblings = _children(process.pid)
        assert len(siblings) == 2
        # Many connections at once: the kernel spreads them over the three listeners, and
        # every message is acknowledged once stored, whichever process took it.
        sent = [f"proc-{i}" for i in range(24)]

        def send(control_id: str) -> list[str]:
            with hl7.client.MLLPClient("127.0.0.1", port) as c:
                c.socket.settimeout(30)
                return msa(c.send_message(adt(control_id)))

        with ThreadPoolExecutor(8) as pool:
            acks = list(pool.map(send, sent))
        assert acks == [["AA", c] for c in sent]
    finally:
        process.terminate()
        assert process.wait(60) in (0, -15)
    for pid in siblings:  # stopped with it
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )
    raws = {m.raw for m in MessageStore(repo.engine).find()}
    assert all(adt(c) in raws for c in sent)


def test_several_listener_processes_need_a_fixed_port(tmp_path: Path) -> None:
    env = {**os.environ, "HUB_DATABASE_URL": f"sqlite:///{tmp_path / 'hub.db'}"}
    env.update(HUB_MLLP_PORT="0", HUB_MLLP_PROCESSES="2")
    env.pop("HUB_BROKER_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "hub.cli", "mllp"], env=env, capture_output=True, timeout=60
    )
    assert done.returncode != 0
    assert b"fixed port" in done.stderr
