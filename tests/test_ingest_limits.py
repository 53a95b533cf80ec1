"""Feed input at and beyond the hub's limits, on SQLite and PostgreSQL.

A CSV cell longer than HUB_CSV_MAX_CELL_CHARS rejects its row (line and
column, raw kept) while the rest of the file goes on; keys longer than their
column are stored as digests and keep their order; a source name that cannot
be stored, a request without a mapping and input without units are refused
with nothing stored; `hub ingest` reports every row that did not end done and
says so in its exit status. None of it answers 500 over HTTP.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from fastapi.testclient import TestClient
from ingest_fixtures import PATIENT_COLUMNS, csv_bytes, hold, ingest, patient_row, read, rid
from sqlalchemy import select

import hub.ingest.pipeline as pipeline_module
import hub.ingest.service as service_module
from adapters.csv.adapter import CsvAdapter
from hub.cli import main as cli
from hub.errors import Invalid
from hub.ingest.dispatch import InlineDispatcher
from hub.ingest.messages import DONE, FAILED
from hub.ingest.service import IngestService
from hub.interactions.context import Context
from hub.settings import Settings, get_settings
from hub.store import SqlRepository
from hub.store.schema import messages

PATIENTS = "synthea-patients"
CSV = {"Content-Type": "text/csv"}
HUGE = 200_000  # characters: over the default limit of 131072, and over csv's own default


@pytest.fixture()
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url, public_base_url="http://hub.test/fhir", ingest_max_attempts=2
    )


@pytest.fixture()
def service(ctx: Context, settings: Settings) -> Iterator[IngestService]:
    svc = IngestService(ctx, settings, dispatcher="inline")
    yield svc
    svc.close()


def patients(*rows: dict[str, str]) -> bytes:
    return csv_bytes(PATIENT_COLUMNS, rows)


def stored(service: IngestService) -> list[Any]:
    with service.store.engine.connect() as conn:
        return list(conn.execute(select(messages).order_by(messages.c.id)))


def pid(i: int) -> str:
    return f"p{i:04d}-0000-0000-0000-000000000000"


# --- a cell over the limit ------------------------------------------------------


def test_a_huge_cell_rejects_its_row_with_line_and_column_and_the_file_goes_on(
    service: IngestService,
) -> None:
    # Past the first batch of 500 rows; the huge cell is quoted and spans lines, so the rows
    # after it must start where they really do.
    rows = [patient_row(pid(i)) for i in range(520)]
    rows[510] = patient_row(pid(510), ADDRESS="1 Long Road\n" + "x" * HUGE + '\n"quoted"')
    summary = ingest(service, PATIENTS, patients(*rows), "long.csv")

    assert (summary.units, summary.done, summary.rejected, summary.dead) == (520, 519, 1, 0)
    line = 2 + 510
    assert summary.errors == [
        f"long.csv line {line}, column ADDRESS: the value is {HUGE + 21} characters long, "
        "over the limit of 131072 (HUB_CSV_MAX_CELL_CHARS)"
    ]
    bad = service.store.get(summary.message_ids[510])
    assert bad is not None and bad.status == FAILED and bad.origin == f"long.csv line {line}"
    assert bad.raw == patients(rows[510])  # kept as it came, for a replay
    after = service.store.get(summary.message_ids[511])
    assert after is not None and after.status == DONE
    assert after.origin == f"long.csv line {line + 3}"
    assert service.ctx.repo.read("Patient", rid("Patient", pid(519))) is not None


def test_a_huge_cell_is_accepted_once_the_limit_is_raised_and_the_row_replayed(
    ctx: Context, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def service_with_limit(chars: int) -> IngestService:
        monkeypatch.setenv("HUB_CSV_MAX_CELL_CHARS", str(chars))
        get_settings.cache_clear()
        return IngestService(ctx, settings, dispatcher="inline")

    field_limit = csv.field_size_limit()
    try:
        small = service_with_limit(40)
        summary = ingest(small, PATIENTS, patients(patient_row(pid(1), CITY="x" * 41)), "a.csv")
        assert summary.errors == [
            "a.csv line 2, column CITY: the value is 41 characters long, over the limit of 40 "
            "(HUB_CSV_MAX_CELL_CHARS)"
        ]
        larger = service_with_limit(HUGE)
        assert larger.replay(summary.message_ids) == summary.message_ids
        message = larger.store.get(summary.message_ids[0])
        assert message is not None and message.status == DONE
    finally:
        monkeypatch.delenv("HUB_CSV_MAX_CELL_CHARS")
        get_settings.cache_clear()
        csv.field_size_limit(field_limit)


TRICKY = [
    'a,b\n1,"two\nlines"\n',
    'a,b\r\n"q""uoted",x\r\n\r\n3,4\r\n',
    'a,b\n"x"y,z\nst"ray,"end\n',
    'a,b\n,\n"",""\n"unclosed,at end',
    'a,"b"c"d",e\n"""",x""y\n',
    ' a , " b" ,\n',
    "\n\na\n,\n",
    'x,"a\r\nb"\r\n\r\nc\rd\r',
    '"',
]


@pytest.mark.parametrize("text", TRICKY)
def test_rows_read_by_hand_are_read_as_the_csv_module_reads_them(text: str) -> None:
    from adapters.csv.adapter import _read_all

    assert _read_all(text) == list(csv.reader(io.StringIO(text, newline="")))


def test_rows_end_only_at_a_line_end_and_the_stream_stays_open() -> None:
    # A form feed or a Unicode line separator in a cell is text, not the end of the row.
    stream = io.BytesIO("A,B\n1,x\x0cy\u2028z\n2,3\r\n4,5\r".encode())
    adapter = CsvAdapter()
    units = list(adapter.split(stream, "f.csv", "m"))
    assert [adapter.parse(u.raw) for u in units] == [
        {"A": "1", "B": "x\x0cy\u2028z"},
        {"A": "2", "B": "3"},
        {"A": "4", "B": "5"},
    ]
    assert [u.origin for u in units] == ["f.csv line 2", "f.csv line 3", "f.csv line 4"]
    assert not stream.closed


def test_the_csv_field_limit_is_raised_never_lowered() -> None:
    before = csv.field_size_limit()
    CsvAdapter(max_cell_chars=10)
    assert csv.field_size_limit() == before
    try:
        CsvAdapter(max_cell_chars=before + 1)
        assert csv.field_size_limit() == before + 1
    finally:
        csv.field_size_limit(before)


def test_a_header_over_the_limit_refuses_the_file_and_stores_nothing(
    service: IngestService,
) -> None:
    for name in ("B" * HUGE, "B" * 131073):  # over csv's field limit, and over the hub's only
        data = ("A," + name + "\n1,2\n").encode()
        with pytest.raises(Invalid, match=r"header\.csv line 1: the header line "):
            ingest(service, PATIENTS, data, "header.csv")
    assert stored(service) == []


# --- values longer than their column -------------------------------------------


def test_an_over_long_order_key_is_stored_as_its_digest_and_keeps_the_order(
    service: IngestService,
) -> None:
    long_key = "L" * 300
    hold(service)
    rows = [
        patient_row(pid(1)),
        patient_row(long_key, LAST="First"),
        patient_row(long_key, LAST="Second"),
    ]
    summary = ingest(service, PATIENTS, patients(*rows), "keys.csv", wait=False)
    keys = [m.order_key for m in stored(service)]
    assert keys[0] == pid(1)
    assert keys[1] == keys[2] and keys[1].startswith("sha256:") and len(keys[1]) == 71

    service.pipeline.process_many(summary.message_ids)
    assert [m.status for m in stored(service)] == [DONE, DONE, DONE]
    patient = service.ctx.repo.read("Patient", rid("Patient", long_key))
    assert patient is not None and b'"Second"' in (patient.content or b"")


def test_a_key_postgresql_cannot_store_loses_no_other_row(service: IngestService) -> None:
    # A NUL in the key column: the batch is stored (its key as a digest) on both databases.
    rows = [patient_row(pid(1)), patient_row("nul\x00key"), patient_row(pid(3))]
    summary = ingest(service, PATIENTS, patients(*rows), "nul.csv")
    assert summary.units == 3
    found = stored(service)
    assert [m.status for m in found] == [DONE, FAILED, DONE]
    # Its identifier would hold the NUL: refused as R4 strings refuse control characters.
    assert "control character U+0000" in (found[1].error or "")
    assert found[1].order_key.startswith("sha256:")


def test_a_source_that_cannot_be_stored_is_refused_with_nothing_stored(
    service: IngestService,
) -> None:
    for source in ("s" * 101, "nul\x00source", "tab\tsource"):
        with pytest.raises(Invalid, match="is not a valid source name"):
            service.ingest(
                "csv", PATIENTS, io.BytesIO(patients(patient_row(pid(1)))), "s.csv", source=source
            )
    service.ingest(
        "csv", PATIENTS, io.BytesIO(patients(patient_row(pid(1)))), "s.csv", source="s" * 100
    )
    assert [m.source for m in stored(service)] == ["s" * 100]


# --- over HTTP -------------------------------------------------------------------


def outcome(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]  # type: ignore[no-any-return]


def test_http_refuses_what_it_cannot_ingest_with_400_and_stores_nothing(
    client: TestClient,
) -> None:
    data = patients(patient_row(pid(1)))
    issue = outcome(client.post("/ingest/csv", content=data, headers=CSV), 400)
    assert issue["code"] == "invalid" and issue["expression"] == ["mapping"]
    assert "mapping parameter is required" in issue["diagnostics"]

    for source in ("s" * 101, "a\x00b"):
        r = client.post(
            "/ingest/csv", params={"mapping": PATIENTS, "source": source}, content=data, headers=CSV
        )
        assert outcome(r, 400)["expression"] == ["source"]

    long_type = {"Content-Type": "text/csv; " + "x" * 100}
    r = client.post(f"/ingest/csv?mapping={PATIENTS}", content=data, headers=long_type)
    assert outcome(r, 400)["expression"] == ["Content-Type"]

    for empty in (b"", csv_bytes(PATIENT_COLUMNS, []), b"\xef\xbb\xbf", b"Id,LAST\n\n\n"):
        r = client.post(f"/ingest/csv?mapping={PATIENTS}", content=empty, headers=CSV)
        assert outcome(r, 400)["code"] == "invalid", empty
    assert client.get("/messages").json() == {"messages": []}


def test_http_a_huge_cell_is_a_rejected_row_not_a_500(client: TestClient) -> None:
    rows = [patient_row(pid(1)), patient_row(pid(2), LAST="x" * HUGE), patient_row(pid(3))]
    r = client.post(
        f"/ingest/csv?mapping={PATIENTS}&wait=true", content=patients(*rows), headers=CSV
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert (body["units"], body["done"], body["rejected"]) == (3, 2, 1)
    assert body["errors"][0].startswith("POST /ingest/csv line 3, column LAST: the value is ")

    long_key = patient_row("K" * 250)
    r = client.post(
        f"/ingest/csv?mapping={PATIENTS}&wait=true", content=patients(long_key), headers=CSV
    )
    assert r.status_code == 202 and r.json()["done"] == 1, r.text


# --- hub ingest ------------------------------------------------------------------


class Runner:
    """`hub ingest` through click, each command's engines closed once it has run."""

    def __init__(self, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HUB_DATABASE_URL", database_url)
        monkeypatch.setenv("HUB_DB_POOL_SIZE", "2")
        monkeypatch.setenv("HUB_INGEST_MAX_ATTEMPTS", "2")
        monkeypatch.delenv("HUB_BROKER_URL", raising=False)
        self.opened: list[SqlRepository] = []
        from_url = SqlRepository.from_url

        def tracked(url: str, *args: Any, **options: Any) -> SqlRepository:
            self.opened.append(from_url(url, *args, **options))
            return self.opened[-1]

        monkeypatch.setattr(SqlRepository, "from_url", tracked)
        self.runner = CliRunner()

    def invoke(self, *args: str) -> Result:
        result = self.runner.invoke(cli, list(args))
        while self.opened:
            self.opened.pop().close()
        return result

    def ingest(self, *args: str) -> Result:
        return self.invoke("ingest", "--adapter", "csv", "--mapping", PATIENTS, *args)


@pytest.fixture()
def hub_ingest(database_url: str, ctx: Context, monkeypatch: pytest.MonkeyPatch) -> Runner:
    return Runner(database_url, monkeypatch)


def test_cli_reports_a_rejected_and_a_dead_row_and_exits_1(
    hub_ingest: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "mixed.csv"
    rows = [
        patient_row(pid(1)),
        patient_row(pid(2), LAST="Poison"),
        patient_row(pid(3), GENDER="Q"),
    ]
    file.write_bytes(patients(*rows, patient_row(pid(4), LAST="x" * HUGE)))
    real = pipeline_module.validate

    def crash(resource: dict[str, Any], **options: Any) -> Any:  # a mapping bug, for one row
        if resource.get("name", [{}])[0].get("family") == "Poison":
            raise RuntimeError("a bug in the mapping")
        return real(resource, **options)

    monkeypatch.setattr(pipeline_module, "validate", crash)
    # No backoff between the attempts (the dispatcher's default `sleep`).
    monkeypatch.setattr(InlineDispatcher.__init__, "__defaults__", (lambda _: None, 100))

    result = hub_ingest.ingest(str(file))

    assert result.exit_code == 1, result.output
    assert "4 rows (0 duplicates): 1 done, 2 rejected, 1 dead, 0 still open; " in result.stdout
    assert "dead: mixed.csv line 3: after 2 attempts: RuntimeError: a bug in the mapping" in (
        result.stderr
    )
    assert "rejected: mixed.csv line 4, column GENDER: unknown code 'Q'" in result.stderr
    assert "rejected: mixed.csv line 5, column LAST: the value is 200000 characters" in (
        result.stderr
    )


def test_cli_reports_rows_still_open_when_it_stops_waiting(
    hub_ingest: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Idle:  # a dispatcher whose workers never come
        def __init__(self, *_: Any, **__: Any) -> None:
            pass

        def submit(self, _: Any) -> None:
            pass

        def close(self) -> None:
            pass

    monkeypatch.setattr(service_module, "InlineDispatcher", Idle)
    file = tmp_path / "slow.csv"
    file.write_bytes(patients(patient_row(pid(1)), patient_row(pid(2))))

    result = hub_ingest.ingest("--timeout", "0.1", str(file))

    assert result.exit_code == 1, result.output
    assert "2 rows (0 duplicates): 0 done, 0 rejected, 0 dead, 2 still open; " in result.stdout
    assert "open: slow.csv line 2: still received" in result.stderr


def test_cli_every_row_done_exits_0(hub_ingest: Runner, tmp_path: Path) -> None:
    file = tmp_path / "good.csv"
    file.write_bytes(patients(patient_row(pid(1)), patient_row("K" * 250)))
    result = hub_ingest.ingest(str(file))
    assert result.exit_code == 0, result.output
    assert "2 rows (0 duplicates): 2 done, 0 rejected, 0 dead, 0 still open; " in result.stdout


def test_cli_a_file_without_rows_is_reported_and_exits_1(
    hub_ingest: Runner, tmp_path: Path, service: IngestService
) -> None:
    header_only, empty, good = tmp_path / "header.csv", tmp_path / "empty.csv", tmp_path / "g.csv"
    header_only.write_bytes(csv_bytes(PATIENT_COLUMNS, []))
    empty.write_bytes(b"")
    good.write_bytes(patients(patient_row(pid(1))))

    result = hub_ingest.ingest(str(header_only), str(empty), str(good))

    assert result.exit_code == 1, result.output
    assert "refused: header.csv holds nothing to ingest" in result.stderr
    assert "refused: empty.csv holds nothing to ingest" in result.stderr
    assert "1 rows (0 duplicates): 1 done" in result.stdout
    assert "; 2 files refused" in result.stdout
    assert [m.origin for m in stored(service)] == ["g.csv line 2"]


def test_cli_refuses_an_unknown_mapping_or_a_bad_source_with_exit_2(
    hub_ingest: Runner, tmp_path: Path, service: IngestService
) -> None:
    file = tmp_path / "p.csv"
    file.write_bytes(patients(patient_row(pid(1))))
    result = hub_ingest.invoke("ingest", "--adapter", "csv", "--mapping", "no-such", str(file))
    assert result.exit_code == 2 and "unknown mapping 'no-such'" in result.output
    result = hub_ingest.ingest("--source", "s" * 101, str(file))
    assert result.exit_code == 2 and "is not a valid source name" in result.output
    assert stored(service) == []


def test_an_error_quoting_a_nul_is_stored_and_loses_no_other_row(service: IngestService) -> None:
    # The mapping's error quotes the bad cell, NUL included: PostgreSQL cannot store that text.
    bad = patient_row(pid(2), BIRTHDATE="\x001961-07-04")
    ingest(service, PATIENTS, patients(patient_row(pid(1)), bad, patient_row(pid(3))), "nul.csv")
    found = stored(service)
    assert [m.status for m in found] == [DONE, FAILED, DONE]
    assert "\\u0000" in (found[1].error or "")


def test_a_cell_holding_a_lone_cr_is_one_row(service: IngestService) -> None:
    out = io.StringIO()  # quoted as a careful exporter writes it (csv.writer would not)
    writer = csv.writer(out, lineterminator="\r", quoting=csv.QUOTE_ALL)
    writer.writerow(PATIENT_COLUMNS)
    for row in (patient_row(pid(1), ADDRESS="1 Main St\rFlat 2"), patient_row(pid(2))):
        writer.writerow([row.get(c, "") for c in PATIENT_COLUMNS])
    ingest(service, PATIENTS, out.getvalue().encode(), "cr.csv")
    assert [m.status for m in stored(service)] == [DONE, DONE]
    patient = read(service, "Patient", rid("Patient", pid(1)))
    assert patient["address"][0]["line"] == ["1 Main St\rFlat 2"]
