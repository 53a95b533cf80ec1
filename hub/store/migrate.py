"""Apply the Alembic migrations to a database (used by `hub db upgrade` and `make run`)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine


def _config(url: str, migrations_dir: Path) -> Config:
    if not (migrations_dir / "env.py").exists():
        raise FileNotFoundError(
            f"No Alembic migrations at {migrations_dir}; "
            "set HUB_MIGRATIONS_DIR to the alembic/ folder"
        )
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def ensure_sqlite_folder(url: str) -> None:
    """The embedded default keeps its file under ./data/, which a fresh clone lacks."""
    if url.startswith("sqlite:///") and not url.endswith(":memory:"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def upgrade(url: str, migrations_dir: Path, revision: str = "head") -> None:
    ensure_sqlite_folder(url)
    command.upgrade(_config(url, migrations_dir), revision)


def downgrade(url: str, migrations_dir: Path, revision: str) -> None:
    command.downgrade(_config(url, migrations_dir), revision)


def current(url: str, migrations_dir: Path) -> None:
    command.current(_config(url, migrations_dir), verbose=False)


def head(migrations_dir: Path) -> str | None:
    """The revision the migration scripts lead to."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config("sqlite://", migrations_dir)).get_current_head()


def revision(engine: Engine) -> str | None:
    """The revision the database is at (None: never migrated). Connecting is the point too:
    it raises when the database cannot be reached."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
