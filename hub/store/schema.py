"""The FHIR store's tables. Alembic owns the schema; this module mirrors it for queries.

`resources` holds the current version of every resource (what reads and
searches touch); `resource_history` holds every version, the current one
included, numbered by a global `seq` that orders system history and keeps its
paging stable. Search index rows belong to the current version and are
replaced in the same transaction as each write.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)

metadata = MetaData()

# SQLite only auto-numbers an INTEGER PRIMARY KEY, PostgreSQL wants BIGINT for a big store.
BigId = BigInteger().with_variant(Integer(), "sqlite")

resources = Table(
    "resources",
    metadata,
    Column("res_type", String(64), primary_key=True),
    Column("res_id", String(64), primary_key=True),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", DateTime(timezone=True), nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("content_hash", String(64), nullable=True),
    Column("content", LargeBinary, nullable=True),
    Index("ix_resources_type_updated", "res_type", "last_updated"),
)

resource_history = Table(
    "resource_history",
    metadata,
    Column("seq", BigId, primary_key=True, autoincrement=True),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", DateTime(timezone=True), nullable=False),
    Column("method", String(8), nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("content_hash", String(64), nullable=True),
    Column("content", LargeBinary, nullable=True),
    UniqueConstraint("res_type", "res_id", "version_id", name="uq_history_version"),
    Index("ix_history_type_seq", "res_type", "seq"),
    Index("ix_history_updated", "last_updated"),
)

search_token = Table(
    "search_token",
    metadata,
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("param", String(100), nullable=False),
    Column("system", String(500), nullable=True),
    Column("code", String(500), nullable=True),
    Index("ix_token_lookup", "res_type", "param", "code", "system"),
    Index("ix_token_resource", "res_type", "res_id"),
)
