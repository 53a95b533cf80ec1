"""The `hub` command line."""

from __future__ import annotations

import os
import sys

import click
from pydantic import ValidationError

from hub.settings import Settings, get_settings


def _settings() -> Settings:
    """Settings validated now, so a bad HUB_* value stops the command with its name."""
    get_settings.cache_clear()
    try:
        return get_settings()
    except ValidationError as e:
        lines = [
            f"  HUB_{'_'.join(map(str, err['loc'])).upper()}: {err['msg']}" for err in e.errors()
        ]
        raise click.ClickException("invalid settings:\n" + "\n".join(lines)) from None


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
def serve(
    host: str | None,
    port: int | None,
    workers: int | None,
    database_url: str | None,
    migrate: bool,
    log_level: str | None,
) -> None:
    # Options become HUB_* variables so that every worker process sees the same settings.
    for name, value in (
        ("HOST", host),
        ("PORT", port),
        ("WORKERS", workers),
        ("DATABASE_URL", database_url),
        ("LOG_LEVEL", log_level),
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
    import uvicorn

    click.echo(
        f"fhir-hub serving http://{settings.host}:{settings.port}{settings.base_path} "
        f"on {settings.database_url.split('@')[-1]}",
        err=True,
    )
    uvicorn.run(
        "hub.api.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        access_log=False,
    )


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


if __name__ == "__main__":
    sys.exit(main())
