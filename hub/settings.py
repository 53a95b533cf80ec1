"""Every setting of the hub, read once from `HUB_*` variables and `.env`.

One class, validated at start-up (a bad value stops `hub serve` with a message
naming the variable), reached through `get_settings()`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_REPO_ROOT = Path(__file__).resolve().parent.parent


def _default_folder(name: str) -> Path:
    beside = _REPO_ROOT / name
    return beside if beside.is_dir() else Path.cwd() / name


def _default_migrations() -> Path:
    # A source checkout (or editable install) keeps alembic/ beside hub/; a
    # regular install does not, and then ./alembic (or HUB_MIGRATIONS_DIR) is used.
    beside = _REPO_ROOT / "alembic"
    return beside if (beside / "env.py").exists() else Path.cwd() / "alembic"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="HUB_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    database_url: str = Field(
        default="sqlite:///./data/hub.db",
        description="SQLAlchemy URL of the FHIR store: the embedded SQLite file by default, "
        "or postgresql+psycopg://user@host:5432/db for production.",
    )
    host: str = Field(default="127.0.0.1", description="Interface the API listens on.")
    port: int = Field(default=8080, ge=1, le=65535, description="Port the API listens on.")
    base_path: str = Field(default="/fhir", description="Path under which the FHIR API is served.")
    public_base_url: str | None = Field(
        default=None,
        description="Absolute base URL that clients use (for Location headers, fullUrl and "
        "paging links); derived from each request when unset.",
    )
    max_body_bytes: int = Field(
        default=10 * 1024 * 1024,
        ge=1024,
        description="Largest accepted request body; larger ones are refused with 413.",
    )
    max_resource_depth: int = Field(
        default=200,
        ge=16,
        le=500,
        description="Deepest element accepted in a resource, counted in path steps "
        "(Patient.name[0].family is 2); deeper resources are refused with 400.",
    )
    default_page_size: int = Field(
        default=20,
        ge=1,
        description="Entries per page of history and search when _count is absent.",
    )
    max_page_size: int = Field(default=1000, ge=1, description="Upper bound on _count.")
    search_total_limit: int = Field(
        default=1000,
        ge=0,
        description="Without _total, a search's first page states the total only when it is at "
        "most this many (counting stops there); _total=accurate always counts.",
    )
    search_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Longest a search may run: each statement on PostgreSQL (statement_timeout), "
        "the whole search on SQLite; past it the search stops and answers 503 (timeout).",
    )
    search_max_criteria: int = Field(
        default=32,
        ge=1,
        description="Most distinct criteria a search may have per type (identical repeats count "
        "once); more answers 400 (too-costly).",
    )
    search_max_or_values: int = Field(
        default=1000,
        ge=1,
        description="Most distinct comma-separated (OR) values of a search, all its criteria "
        "together; more answers 400 (too-costly).",
    )
    search_max_chain: int = Field(
        default=4,
        ge=0,
        description="Most reference hops of a chained parameter (subject.organization.name is 2); "
        "more answers 400.",
    )
    search_max_has_depth: int = Field(
        default=2,
        ge=0,
        description="Most nested _has levels of a reverse-chained parameter; more answers 400.",
    )
    search_max_sort: int = Field(
        default=8,
        ge=1,
        description="Most different _sort keys of a search (each adds a lookup per result); "
        "more answers 400.",
    )
    db_pool_size: int = Field(
        default=20,
        ge=1,
        description="Database connections per process (PostgreSQL, or a SQLite file); also "
        "the number of request threads. `hub serve` opens up to workers x (this + "
        "HUB_DB_READ_CONNECTIONS) connections and refuses to start when the server's "
        "max_connections cannot hold them.",
    )
    db_read_connections: int = Field(
        default=2,
        ge=1,
        description="PostgreSQL connections per process for reads by id, which run on the "
        "event loop and share queries: more gives smaller batches, not more reads.",
    )
    db_pool_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="Longest a request waits for a pooled connection; then it is answered "
        "503 with Retry-After.",
    )
    db_lock_timeout_seconds: float = Field(
        default=2.0,
        gt=0,
        description="Longest a conditional create waits for another request with the same "
        "criteria (PostgreSQL); then it is answered 503 with Retry-After. At most three "
        "quarters of the pool wait at once; more are answered 503 at once.",
    )
    referential_integrity: bool = Field(
        default=True,
        description="Refuse writes whose literal references (Patient/1) name no live resource "
        "(400), and deletes of resources others still reference (409).",
    )
    workers: int = Field(default=1, ge=1, description="uvicorn worker processes for `hub serve`.")
    shutdown_seconds: int = Field(
        default=5,
        ge=0,
        description="On SIGTERM, how long `hub serve` lets requests in flight finish before "
        "cancelling them.",
    )
    log_level: str = Field(default="info", description="Log level of every hub process.")
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Log lines as text, or as one JSON object a line (for log collectors); "
        "either way each line of a request carries its request id.",
    )
    readiness_timeout_seconds: float = Field(
        default=2.0,
        gt=0,
        description="Longest /readyz waits for the database or the broker to answer.",
    )
    registry_refresh_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How often each process checks whether the stored SearchParameters "
        "changed (0: on every use); a reindex waits this long for every process to see them.",
    )
    migrations_dir: Path = Field(
        default_factory=_default_migrations,
        description="Folder holding the Alembic migration scripts.",
    )

    broker_url: str | None = Field(
        default=None,
        description="Celery broker (redis://127.0.0.1:6379/0). Unset: feed messages are "
        "processed by a thread pool inside `hub serve` (the embedded default).",
    )
    mappings_dir: Path = Field(
        default_factory=lambda: _default_folder("mappings"),
        description="Folder of mapping files (<adapter>/<name>.yaml).",
    )
    adapters: list[str] | None = Field(
        default=None,
        description='Adapters to enable, as a JSON list (\'["csv","jsonl"]\'); unset: every '
        "installed adapter (built-in or entry point). An unknown name stops start-up.",
    )
    ingest_threads: int = Field(
        default=2, ge=1, description="Threads processing feed messages in the embedded mode."
    )
    ingest_batch: int = Field(
        default=100,
        ge=1,
        description="Feed messages a worker processes in one database transaction.",
    )
    ingest_max_attempts: int = Field(
        default=5, ge=1, description="Attempts before a message with transient errors is dead."
    )
    ingest_stale_seconds: float = Field(
        default=60.0, gt=0, description="A message open this long without progress is re-sent."
    )
    ingest_reference_wait_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="A message referring to a resource that has not arrived waits this long, "
        "then fails naming it.",
    )
    ingest_sweep_seconds: float = Field(
        default=15.0, gt=0, description="How often the sweeper looks for such messages."
    )
    csv_max_cell_chars: int = Field(
        default=131072,
        ge=1,
        description="Longest CSV cell, in characters: a row with a longer one is rejected, "
        "naming its line and column, and the rest of the file goes on.",
    )
    hl7v2_charset: str = Field(
        default="UTF-8",
        description="HL7 v2 character set (an MSH-18 value or a Python codec name) of messages "
        "whose MSH-18 is empty.",
    )
    hl7v2_source_charsets: dict[str, str] = Field(
        default_factory=dict,
        description="HL7 v2 character set per source, for messages whose MSH-18 is empty, as "
        'JSON (\'{"LAB/NORTH": "8859/1"}\'); a source not listed gets HUB_HL7V2_CHARSET.',
    )
    hl7v2_timezone: str = Field(
        default="UTC",
        description="IANA zone of HL7 v2 times that carry no offset (a per-source value may "
        "be set in the source's mapping file).",
    )

    mllp_enabled: bool = Field(
        default=True,
        description="`hub serve` also listens for HL7 v2 over MLLP (false: the API alone; "
        "`hub mllp` runs the listener as a process of its own).",
    )
    mllp_host: str = Field(default="127.0.0.1", description="Interface the MLLP listener uses.")
    mllp_port: int = Field(default=2575, ge=0, le=65535, description="Port of the MLLP listener.")
    mllp_processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="`hub mllp` processes listening on the one port (SO_REUSEPORT: the kernel "
        "spreads connections between them), each with its own group commit. More than one "
        "needs a fixed port.",
    )
    mllp_max_frame_bytes: int = Field(
        default=1 << 20,
        ge=1024,
        description="Largest MLLP frame (one HL7 v2 message) accepted; a larger one is "
        "answered AR and its connection closed.",
    )
    mllp_idle_seconds: float = Field(
        default=300.0, gt=0, description="An MLLP connection silent this long is closed."
    )
    hl7v2_commit_window_seconds: float = Field(
        default=0.0,
        ge=0,
        description="HL7 v2 messages received (MLLP and HTTP) are committed in groups: what "
        "arrives while a commit runs forms the next group. This adds a wait for more after "
        "a group's first message (0: none, the commit's own time is the window).",
    )
    hl7v2_commit_group: int = Field(
        default=500, ge=1, description="Most HL7 v2 messages committed in one transaction."
    )

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError("HUB_DATABASE_URL must be a sqlite:// or postgresql+psycopg:// URL")
        return value

    @field_validator("base_path")
    @classmethod
    def _normalise_base_path(cls, value: str) -> str:
        value = "/" + value.strip("/")
        return "" if value == "/" else value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


class InvalidSettings(ValueError):
    """A HUB_* value that does not validate; the message names each variable."""


def load_settings() -> Settings:
    """The settings as the environment and `.env` give them now, validated now.

    Read afresh, not the cached ones, so that a command's options, which it sets as
    HUB_* variables, take effect. Raises `InvalidSettings` naming every bad variable.
    """
    get_settings.cache_clear()
    try:
        return get_settings()
    except ValidationError as e:
        lines = [
            f"  HUB_{'_'.join(map(str, err['loc'])).upper()}: {err['msg']}" for err in e.errors()
        ]
        raise InvalidSettings("invalid settings:\n" + "\n".join(lines)) from None
