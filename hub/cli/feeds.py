"""`hub ingest`, `hub worker`, `hub beat`, `hub messages …`, `hub adapters …`, `hub mappings …`."""

from __future__ import annotations

import io
import sys
from collections import Counter
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from hub.cli import environment
from hub.ingest.messages import STATUSES

if TYPE_CHECKING:
    from hub.assembly import DispatchMode


def _service(dispatcher: DispatchMode | None = None) -> Any:
    from hub.assembly import ingest_service
    from hub.ingest.adapters import UnknownAdapter

    try:
        return ingest_service(environment.settings(), dispatcher=dispatcher)
    except UnknownAdapter as e:
        raise click.ClickException(str(e)) from None


class _Counting(io.RawIOBase):
    """A binary file that counts the bytes read from it (for the progress bar)."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.read_bytes = stream, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n: int = self.stream.readinto(buffer) or 0
        self.read_bytes += n
        return n


def _progress(label: str, unit: str = "rows", counting: Any = None, total: int = 0) -> Any:
    width = 20

    def show(summary: Any) -> None:
        bar = ""
        if counting is not None and total:
            share = min(1.0, counting.read_bytes / total)
            filled = int(share * width)
            bar = f"[{'#' * filled}{'.' * (width - filled)}] {share:4.0%} "
        click.echo(
            f"\r{label}: {bar}{summary.units} {unit}, {summary.accepted} new, "
            f"{summary.duplicates} duplicates, {summary.done} done, {summary.rejected} rejected, "
            f"{summary.dead} dead, {summary.open} open   ",
            nl=False,
            err=True,
        )

    return show


class Refused(click.ClickException):
    """The command line is refused before anything is stored."""

    exit_code = 2


SHOWN = 20  # rows not done listed one by one; `hub messages list` shows the rest


@click.command(
    help="Ingest feed files: each unit (CSV row, HL7 message) is stored, then "
    "processed. Without HUB_BROKER_URL the processing happens here; with it, Celery "
    "workers do it and this command waits for them. Every row that did not end done "
    "is reported. Exit status: 0 every row ended done; 1 a row was rejected, is dead "
    "or still open, or a file held no rows; 2 the command was refused (unknown adapter "
    "or mapping, invalid source), nothing stored."
)
@click.option("--adapter", required=True, help="Adapter name (see `hub adapters list`).")
@click.option(
    "--mapping",
    help="Mapping name (see `hub adapters list`); not for hl7v2, whose message map is "
    "chosen per message from MSH-9.",
)
@click.option("--source", help="Source system id (default: the mapping's).")
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait until every unit is processed and print the outcome.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    help="Stop waiting after this many seconds; rows still open are reported as not done "
    "[default: wait until every row is finished].",
)
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
def ingest(
    adapter: str,
    mapping: str | None,
    source: str | None,
    wait: bool,
    timeout: float | None,
    files: tuple[Path, ...],
) -> None:
    from hub.assembly import settled
    from hub.errors import HubError
    from hub.ingest.messages import ACTIVE, check_source

    service = _service(dispatcher=None if _broker() else "inline")
    try:  # refused before any file is read: the same for every file
        per_message = bool(getattr(service.adapters.get(adapter), "chooses_mapping", False))
        if per_message and (mapping or source):
            raise Refused(
                f"the {adapter} adapter takes neither --mapping nor --source: each message "
                "names its source (MSH-3/MSH-4) and its type (MSH-9), which chooses the map"
            )
        if not per_message:
            check_source(source or service.mapping(adapter, mapping).source)
    except (HubError, LookupError, Refused) as e:
        service.close()
        raise Refused(str(e)) from None
    waited = wait or service.mode == "inline"  # inline, the rows are processed here anyway
    totals: Counter[str] = Counter()
    not_done: list[tuple[str, str]] = []
    refused: list[str] = []
    started = datetime.now()
    stack = ExitStack()
    stack.enter_context(settled())  # the service is built: the collector may leave it be
    try:
        for path in files:
            with path.open("rb") as stream:
                counting = _Counting(stream)
                try:
                    summary = service.ingest(
                        adapter,
                        mapping,
                        io.BufferedReader(counting),
                        path.name,
                        source=source,
                        wait=wait,
                        timeout=timeout,
                        progress=_progress(
                            path.name,
                            "messages" if per_message else "rows",
                            counting,
                            path.stat().st_size,
                        ),
                    )
                except HubError as e:  # this file is refused (no rows): go on with the others
                    click.echo(f"refused: {e.message}", err=True)
                    refused.append(path.name)
                    continue
            click.echo("", err=True)
            totals.update(
                rows=summary.units,
                duplicates=summary.duplicates,
                done=summary.done,
                rejected=summary.rejected,
                dead=summary.dead,
                open=summary.open,
                pending=summary.pending,
                resources=summary.resources,
            )
            not_done += summary.not_done
    finally:
        stack.close()
        service.close()
    seconds = (datetime.now() - started).total_seconds() or 1e-9
    labels = {"failed": "rejected", **dict.fromkeys(ACTIVE, "open")}
    for status, why in not_done[:SHOWN]:
        click.echo(f"{labels.get(status, status)}: {why}", err=True)
    if len(not_done) > SHOWN:
        statuses = " or ".join(sorted({status for status, _ in not_done[SHOWN:]}))
        click.echo(
            f"... and {len(not_done) - SHOWN} more (hub messages list --status {statuses})",
            err=True,
        )
    outcome = (
        f"{totals['done']} done, {totals['rejected']} rejected, {totals['dead']} dead, "
        f"{totals['open']} still open"
        + (
            f", {totals['pending']} pending (a reference has not arrived)"
            if totals["pending"]
            else ""
        )
        if waited
        else "stored, not waited for"
    )
    units = "messages" if per_message else "rows"
    click.echo(
        f"{totals['rows']} {units} ({totals['duplicates']} duplicates): {outcome}; "
        f"{totals['resources']} resources written, {totals['rows'] / seconds:.0f} {units}/s"
        + (f"; {len(refused)} files refused" if refused else "")
    )
    not_finished = (
        totals["rejected"] + totals["dead"] + (totals["open"] + totals["pending"] if waited else 0)
    )
    sys.exit(1 if not_finished or refused else 0)


def _broker() -> str | None:
    return environment.settings().broker_url


@click.command(help="Start a Celery worker that processes feed messages (needs HUB_BROKER_URL).")
@click.option("--concurrency", type=int, default=2, show_default=True, help="Worker processes.")
@click.option("--loglevel", help="Log level [HUB_LOG_LEVEL, default info].")
def worker(concurrency: int, loglevel: str | None) -> None:
    if not _broker():
        raise click.ClickException("HUB_BROKER_URL is not set; `hub serve` processes feeds itself")
    from hub.ingest.celery_app import MESSAGE_QUEUE, SWEEP_QUEUE, app

    app.worker_main(
        [
            "worker",
            f"--concurrency={concurrency}",
            f"--loglevel={loglevel or environment.settings().log_level}",
            f"--queues={SWEEP_QUEUE},{MESSAGE_QUEUE}",
            "--without-gossip",
            "--without-mingle",
        ]
    )


@click.command(help="Start Celery beat: it runs the sweeper that re-sends unfinished messages.")
@click.option("--loglevel", help="Log level [HUB_LOG_LEVEL, default info].")
def beat(loglevel: str | None) -> None:
    if not _broker():
        raise click.ClickException("HUB_BROKER_URL is not set; `hub serve` sweeps by itself")
    from hub.ingest.celery_app import app

    # The schedule is kept in memory: its only state is when the sweep last ran, and a
    # restarted beat sweeping at once is harmless. Nothing is left on disk.
    app.start(
        [
            "beat",
            f"--loglevel={loglevel or environment.settings().log_level}",
            "--scheduler=celery.beat:Scheduler",
        ]
    )


@click.group(help="Inspect, retry and replay stored feed messages.")
def messages() -> None:
    pass


@messages.command("list", help="List messages, newest first.")
@click.option("--status", type=click.Choice(STATUSES))
@click.option("--source", help="Only this source system.")
@click.option("--limit", type=int, default=50, show_default=True)
def list_messages(status: str | None, source: str | None, limit: int) -> None:
    service = _service("inline")
    for m in service.store.find(status, source, limit):
        error = f"  {m.error}" if m.error else ""
        click.echo(
            f"{m.id:>8}  {m.status:<10} {m.source:<12} {m.adapter:<6} "
            f"{m.origin or m.external_id}{error}"
        )


@messages.command(help="Show one message: raw content, error, produced resources, lineage.")
@click.argument("message_id", type=int)
def show(message_id: int) -> None:
    service = _service("inline")
    message = service.store.get(message_id)
    if message is None:
        raise click.ClickException(f"message {message_id} is not known")
    for key, value in message.summary().items():
        click.echo(f"{key}: {value}")
    click.echo("raw:")
    click.echo(message.raw.decode("utf-8", "replace"))
    for line in service.store.lineage_for_message(message_id):
        click.echo(f"lineage: {line['source']} -> {line['element']} ({line['resource']})")


@messages.command(help="Retry failed or dead messages (processed here, or by the workers).")
@click.argument("message_ids", type=int, nargs=-1, required=True)
def retry(message_ids: tuple[int, ...]) -> None:
    service = _service(None if _broker() else "inline")
    reopened = service.retry(list(message_ids))
    click.echo(f"{len(reopened)} messages retried")


@messages.command(
    help="Run stored messages again through the current mappings: by id, or all "
    "of a source received in a time window. Idempotent."
)
@click.argument("message_ids", type=int, nargs=-1)
@click.option("--source", help="Every message of this source system…")
@click.option("--since", type=click.DateTime(), help="…received at or after this time…")
@click.option("--until", type=click.DateTime(), help="…and before this one.")
def replay(
    message_ids: tuple[int, ...], source: str | None, since: datetime | None, until: datetime | None
) -> None:
    service = _service(None if _broker() else "inline")
    ids = list(message_ids) or service.store.ids(source=source, since=since, until=until)
    if not ids:
        raise click.ClickException("no message matches")
    reopened = service.replay(ids)
    click.echo(f"{len(reopened)} messages replayed")


@click.group(help="Feed adapters.")
def adapters() -> None:
    pass


def _registry() -> tuple[Any, Any]:
    """Settings and adapter registry, without the store: these commands need no database."""
    from hub.ingest.adapters import AdapterRegistry, UnknownAdapter

    current = environment.settings()
    try:
        return current, AdapterRegistry.discover(current.adapters)
    except UnknownAdapter as e:
        raise click.ClickException(str(e)) from None


@adapters.command("list", help="Every adapter, where it comes from and its mappings.")
def list_adapters() -> None:
    settings, registry = _registry()
    mappings = registry.mappings(settings.mappings_dir)
    for name in registry.names():
        info = registry.available[name]
        state = "" if name in registry.enabled else "  (disabled: not in HUB_ADAPTERS)"
        click.echo(f"{name:<10} {info.origin:<16} {info.target}{state}")
        for mapping in sorted(m.name for m in mappings.values() if m.adapter == name):
            m = mappings[mapping]
            click.echo(f"    {mapping:<28} v{m.version}  {m.description}")


@adapters.command(
    "new",
    help="Create a working adapter package for a new feed: a JSON-lines "
    "adapter named NAME, one mapping with a golden example, tests, and the entry "
    "point that makes the hub find it once installed.",
)
@click.argument("name")
@click.option(
    "--path",
    "target",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to create the package in (absent or empty) [default: ./fhir-hub-NAME].",
)
def new_adapter(name: str, target: Path | None) -> None:
    from hub.ingest.scaffold import Names, create

    _, registry = _registry()
    try:
        target = target or Path(Names.of(name).dist)
        names, written = create(name, target, registry.names())
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    for path in written:
        click.echo(f"  wrote {_relative(path)}")
    where = _relative(target)
    example = f"{where}/{names.package}/mappings/{name}/examples/{names.mapping}/basic.jsonl"
    enabled = ",".join(f'"{n}"' for n in [*registry.enabled, name])
    steps = [
        (f"pip install -e {where}", "into the hub's environment"),
        ("hub adapters list", f"{name} is listed, with its mapping {names.mapping}"),
        (f"hub mappings test --adapter {name}", "its golden examples pass"),
        (f"pytest {where}", "the package's own tests"),
        (f"hub ingest --adapter {name} --mapping {names.mapping} {example}", ""),
    ]
    width = max(len(command) for command, note in steps if note) + 2
    click.echo(f"\nAdapter '{name}' created in {where}. Next steps:")
    for command, note in steps:
        click.echo(f"  {command:<{width}}# {note}" if note else f"  {command}")
    click.echo(f"""Then make it yours: the wire format in {names.package}/adapter.py, the meaning in
mappings/{name}/*.yaml, sample input and expected output in mappings/{name}/examples/
(`hub mappings test --adapter {name} --update` rewrites the expected files: review the diff).
If HUB_ADAPTERS is set, add the new name to it: HUB_ADAPTERS='[{enabled}]'.
See docs/adapters.md.""")


def _relative(path: Path) -> str:
    """A path as the user would type it: relative to here when below it, starting with ./"""
    try:
        shown = path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return str(path)
    return f"./{shown}" if str(shown) != "." else "."


@click.group(help="Mapping files.")
def mappings() -> None:
    pass


@mappings.command(
    "test",
    help="Run the golden examples: each sample input under "
    "<adapter>/examples/<mapping>/ must map to its <case>.expected.json. Looks in "
    "HUB_MAPPINGS_DIR and in the mappings every enabled adapter package ships.",
)
@click.option("--adapter", help="Only the examples of this adapter.")
@click.option("--mapping", help="Only the examples of this mapping.")
@click.option(
    "--update",
    is_flag=True,
    help="Rewrite the expected files with the current output (after an intended "
    "change: review the diff before committing it).",
)
def test_mappings(adapter: str | None, mapping: str | None, update: bool) -> None:
    from hub.ingest import golden

    settings, registry = _registry()
    roots = registry.mapping_roots(settings.mappings_dir)
    results = golden.run(roots, registry, adapter=adapter, mapping=mapping, update=update)
    if not results:
        wanted = " ".join(
            f"--{k} {v}" for k, v in (("adapter", adapter), ("mapping", mapping)) if v
        )
        raise click.ClickException(
            f"no golden examples {f'for {wanted} ' if wanted else ''}"
            f"under {', '.join(map(str, roots))}"
        )
    colours = {golden.PASS: "green", golden.FAIL: "red", golden.UPDATED: "yellow"}
    for result in results:
        report = result.report()
        click.echo(
            click.style(result.status, fg=colours[result.status]) + report[len(result.status) :]
        )
    for missing in golden.untested(roots, adapter, mapping):
        click.echo(f"note: {missing} has no golden example", err=True)
    counts = {s: sum(r.status == s for r in results) for s in colours}
    words = {golden.PASS: "passed", golden.FAIL: "failed", golden.UPDATED: "updated"}
    click.echo(", ".join(f"{n} {words[s]}" for s, n in counts.items() if n))
    sys.exit(1 if counts[golden.FAIL] else 0)


COMMANDS = [ingest, worker, beat, messages, adapters, mappings]
