"""The `hub` command line."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from hub.cli.environment import settings as _settings
from hub.settings import Settings

if TYPE_CHECKING:
    from hub.interactions.context import Context


@click.group(
    help="fhir-hub: a FHIR R4 interoperability hub. Settings come from HUB_* "
    "environment variables or a .env file; options below override them."
)
@click.version_option(package_name="fhir-hub")
def main() -> None:
    pass


@main.command(
    help="Serve the FHIR REST API (on the embedded SQLite store unless "
    "HUB_DATABASE_URL names PostgreSQL)."
)
@click.option("--host", help="Interface to listen on [HUB_HOST, default 127.0.0.1].")
@click.option("--port", type=int, help="Port to listen on [HUB_PORT, default 8080].")
@click.option("--workers", type=int, help="uvicorn worker processes [HUB_WORKERS, default 1].")
@click.option("--database-url", help="SQLAlchemy URL of the store [HUB_DATABASE_URL].")
@click.option(
    "--migrate/--no-migrate",
    default=False,
    show_default=True,
    help="Apply pending database migrations before serving.",
)
@click.option("--log-level", help="uvicorn log level [HUB_LOG_LEVEL, default info].")
@click.option(
    "--mllp/--no-mllp",
    default=None,
    help="Also listen for HL7 v2 over MLLP [HUB_MLLP_ENABLED, default on].",
)
@click.option("--mllp-port", type=int, help="MLLP port [HUB_MLLP_PORT, default 2575].")
def serve(
    host: str | None,
    port: int | None,
    workers: int | None,
    database_url: str | None,
    migrate: bool,
    log_level: str | None,
    mllp: bool | None,
    mllp_port: int | None,
) -> None:
    # Options become HUB_* variables so that every worker process sees the same settings.
    for name, value in (
        ("HOST", host),
        ("PORT", port),
        ("WORKERS", workers),
        ("DATABASE_URL", database_url),
        ("LOG_LEVEL", log_level),
        ("MLLP_ENABLED", None if mllp is None else str(mllp).lower()),
        ("MLLP_PORT", mllp_port),
    ):
        if value is not None:
            os.environ[f"HUB_{name}"] = str(value)
    settings = _settings()
    if migrate:
        from hub.store.migrate import upgrade

        try:
            upgrade(settings.database_url, settings.migrations_dir)
        except FileNotFoundError as e:
            raise click.ClickException(str(e)) from None
    if settings.database_url.startswith("postgresql"):
        _check_connections(settings)
    import uvicorn

    listening = (
        f" and MLLP on {settings.mllp_host}:{settings.mllp_port}" if settings.mllp_enabled else ""
    )
    click.echo(
        f"fhir-hub serving http://{settings.host}:{settings.port}{settings.base_path}"
        f"{listening} on {settings.database_url.split('@')[-1]}",
        err=True,
    )
    from hub import logs

    uvicorn.run(
        "hub.cli.serving:create_app" if settings.mllp_enabled else "hub.api.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        log_config=logs.config(settings.log_level, settings.log_format),
        access_log=False,
        # On SIGTERM: requests in flight get this long, then they are cancelled. Every wait
        # of a request is bounded (pool, locks), so the process ends shortly after.
        timeout_graceful_shutdown=settings.shutdown_seconds,
    )


def _check_connections(settings: Settings) -> None:
    """Refuse to serve when the server can never hold the hub's connections; warn when
    it cannot now. A server that cannot be reached yet is not checked."""
    from hub.store.capacity import TooFewConnections, Unreachable, judge, server_capacity

    try:
        capacity = server_capacity(settings.database_url)
    except Unreachable as e:
        click.echo(f"warning: connection limits not checked: {e}".rstrip(), err=True)
        return
    try:
        warning = judge(
            capacity, settings.workers, settings.db_pool_size, settings.db_read_connections
        )
    except TooFewConnections as e:
        raise click.ClickException(str(e)) from None
    if warning:
        click.echo(f"warning: {warning}", err=True)


@main.group(help="Database schema commands (Alembic migrations).")
def db() -> None:
    pass


@db.command(help="Apply every pending migration to the database of HUB_DATABASE_URL.")
@click.option("--database-url", help="SQLAlchemy URL to migrate instead of HUB_DATABASE_URL.")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def upgrade(database_url: str | None, revision: str) -> None:
    from hub.store.migrate import upgrade as run_upgrade

    settings = _settings()
    url = database_url or settings.database_url
    try:
        run_upgrade(url, settings.migrations_dir, revision)
    except FileNotFoundError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"database at {url.split('@')[-1]} is at revision {revision}", err=True)


@db.command(help="Show the revision the database is at.")
@click.option("--database-url", help="SQLAlchemy URL instead of HUB_DATABASE_URL.")
def current(database_url: str | None) -> None:
    from hub.store.migrate import current as show

    settings = _settings()
    show(database_url or settings.database_url, settings.migrations_dir)


def _context(database_url: str | None) -> Context:
    """A context for a command: its registries look at the store only when told to."""
    from hub.assembly import command_context

    return command_context(_settings(), database_url)


@main.group(help="Search parameter definitions: SearchParameter resources in the store.")
def definitions() -> None:
    pass


@definitions.command(
    "load",
    help="Store the SearchParameters of FILE (a Bundle or one SearchParameter; loading again "
    "changes nothing) and report which are indexed and which unsupported, and why. New ones "
    "are searchable after `hub reindex`.",
)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--report",
    "report_file",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also write the report as JSON to this file.",
)
@click.option("--database-url", help="SQLAlchemy URL of the store [HUB_DATABASE_URL].")
def load_definitions(file: Path, report_file: Path | None, database_url: str | None) -> None:
    import orjson

    from hub.interactions.definitions import load_definitions as load
    from hub.search.registry import bundle_resources

    try:
        data = orjson.loads(file.read_bytes())
    except orjson.JSONDecodeError as e:
        raise click.ClickException(f"{file} is not JSON: {e}") from None
    if not isinstance(data, dict) or data.get("resourceType") not in ("Bundle", "SearchParameter"):
        raise click.ClickException(f"{file} holds neither a Bundle nor a SearchParameter")
    ctx = _context(database_url)
    try:
        report = load(ctx, bundle_resources(data))
    finally:
        ctx.repo.close()
    click.echo(f"{file}:")
    for line in report.lines():
        click.echo(line)
    if report_file is not None:
        report_file.write_bytes(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2))
        click.echo(f"report written to {report_file}", err=True)


@main.command(
    help="Index the values of stored search parameters that await it (or re-extract the index "
    "of every resource of the --type given); prints its progress on stderr."
)
@click.option(
    "--type",
    "types",
    multiple=True,
    help="A resource type to reindex (repeat the option for more); default: the types of "
    "the pending parameters.",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="Resources re-extracted per transaction.",
)
@click.option("--database-url", help="SQLAlchemy URL of the store [HUB_DATABASE_URL].")
def reindex(types: tuple[str, ...], batch: int, database_url: str | None) -> None:
    from hub.errors import HubError
    from hub.parameters.reindex import reindex as run

    ctx = _context(database_url)
    tty = sys.stderr.isatty()
    shown = {"at": 0.0}

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - shown["at"] < (0.2 if tty else 5.0):
            return
        shown["at"] = now
        percent = f" ({100 * done // total}%)" if total else ""
        line = f"reindexed {done} of {total} resources{percent}"
        if tty:
            click.echo(f"\r{line}", err=True, nl=done >= total)
        else:
            click.echo(line, err=True)

    try:
        job = run(
            ctx.repo,
            ctx.registries.params,
            types,
            batch=batch,
            settle_seconds=ctx.settings.registry_refresh_seconds,
            progress=progress,
        )
    except HubError as e:
        raise click.ClickException(str(e)) from None
    finally:
        ctx.repo.close()
    kinds = job.resource_types
    named = ", ".join(kinds) if len(kinds) <= 8 else f"{len(kinds)} resource types"
    click.echo(f"reindex job {job.id} {job.status}: {job.done} resources of {named or 'no type'}")


@main.command(
    help="Listen for HL7 v2 over MLLP, as a process of its own (scale-out; `hub serve` "
    "listens too unless HUB_MLLP_ENABLED=false). Each message is committed to the message "
    "store before its ACK; without HUB_BROKER_URL this process also processes them."
)
@click.option("--host", help="Interface to listen on [HUB_MLLP_HOST, default 127.0.0.1].")
@click.option("--port", type=int, help="Port to listen on [HUB_MLLP_PORT, default 2575].")
@click.option("--database-url", help="SQLAlchemy URL of the store [HUB_DATABASE_URL].")
@click.option(
    "--processes",
    type=int,
    help="Listener processes on the port [HUB_MLLP_PROCESSES, default 1]: the kernel spreads "
    "connections between them.",
)
@click.option("--sibling", is_flag=True, hidden=True, help="Started by another `hub mllp`.")
def mllp(
    host: str | None,
    port: int | None,
    database_url: str | None,
    processes: int | None,
    sibling: bool,
) -> None:
    import asyncio

    from hub import logs
    from hub.mllp.serve import supervise

    for name, value in (
        ("MLLP_HOST", host),
        ("MLLP_PORT", port),
        ("DATABASE_URL", database_url),
        ("MLLP_PROCESSES", processes),
    ):
        if value is not None:
            os.environ[f"HUB_{name}"] = str(value)
    settings = _settings()
    logs.configure(settings.log_level, settings.log_format)

    def ready(listener: object) -> None:
        click.echo(
            f"fhir-hub MLLP listening on {settings.mllp_host}:{getattr(listener, 'port', '?')} "
            f"on {settings.database_url.split('@')[-1]}",
            err=True,
        )

    try:
        import uvloop  # installed with uvicorn[standard]: a faster event loop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(supervise(settings, settings.mllp_processes, ready, sibling=sibling))
    except (LookupError, ValueError) as e:  # the hl7v2 adapter is not enabled; port 0
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(
            f"cannot listen on {settings.mllp_host}:{settings.mllp_port}: {e}"
        ) from None


def _register_feed_commands() -> None:
    from hub.cli.feeds import COMMANDS

    for command in COMMANDS:
        main.add_command(command)


_register_feed_commands()
