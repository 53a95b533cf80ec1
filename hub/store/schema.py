"""The FHIR store's tables. Alembic owns the schema; this module mirrors it for queries.

`resources` holds the current version of every resource (what reads and
searches touch); `resource_history` holds every version, the current one
included, numbered by a global `seq` that orders system history and keeps its
paging stable. Search index rows belong to the current version and are
replaced in the same transaction as each write.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
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
    # Live resources: counts and id semi-joins without reading the (wide) rows (0004).
    Index(
        "ix_resources_live",
        "res_type",
        "res_id",
        postgresql_where=text("deleted IS false"),
        sqlite_where=text("deleted IS 0"),
    ),
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


def _index_table(
    name: str,
    *columns: Column[Any],
    lookups: tuple[tuple[str, ...], ...],
    carry: dict[str, tuple[str, ...]] | None = None,
) -> Table:
    """A search index table: one row per (resource, parameter, value).

    Lookup indexes end with res_id, so that a criterion's ids come from the index alone
    (0004). On PostgreSQL, extended statistics on (res_type, param, ...) tell the planner
    how these columns go together (0004; not expressible here), and `carry` adds columns a
    lookup's conditions test besides its own (INCLUDE, 0013): a date range bounds `low` and
    tests `high`.
    """
    return Table(
        name,
        metadata,
        Column("res_type", String(64), nullable=False),
        Column("res_id", String(64), nullable=False),
        Column("param", String(100), nullable=False),
        *columns,
        Index(f"ix_{name}_resource", "res_type", "res_id"),
        *(
            Index(
                f"ix_{name}_{'_'.join(cols)}",
                "res_type",
                "param",
                *cols,
                "res_id",
                postgresql_include=list((carry or {}).get("_".join(cols), ())),
            )
            for cols in lookups
        ),
    )


search_token = _index_table(
    "search_token",
    Column("system", String(500), nullable=True),
    Column("code", String(500), nullable=True),
    lookups=(("code", "system"),),
)
search_string = _index_table(
    "search_string",
    Column("value", String(500), nullable=False),  # normalised: case and accents folded
    Column("exact", String(500), nullable=False),
    lookups=(("value",),),
)
search_date = _index_table(
    "search_date",
    Column("low", DateTime(timezone=True), nullable=False),
    Column("high", DateTime(timezone=True), nullable=False),
    lookups=(("low",), ("high",)),
    carry={"low": ("high",), "high": ("low",)},
)
search_number = _index_table(
    "search_number",
    Column("value", Float, nullable=False),
    lookups=(("value",),),
)
search_quantity = _index_table(
    "search_quantity",
    Column("value", Float, nullable=False),
    Column("system", String(500), nullable=True),
    Column("code", String(500), nullable=True),
    Column("unit", String(500), nullable=True),
    lookups=(("code", "value"),),
)
search_reference = _index_table(
    "search_reference",
    Column("target_type", String(64), nullable=True),
    Column("target_id", String(500), nullable=False),
    Column("url", String(500), nullable=False),
    lookups=(("target_id",),),
)
search_uri = _index_table(
    "search_uri",
    Column("value", String(500), nullable=False),
    lookups=(("value",),),
)
search_composite = _index_table(
    "search_composite",
    Column("c1_system", String(500), nullable=True),
    Column("c1_code", String(500), nullable=True),
    Column("c2_system", String(500), nullable=True),
    Column("c2_code", String(500), nullable=True),
    Column("c2_value", Float, nullable=True),
    Column("c2_low", DateTime(timezone=True), nullable=True),
    Column("c2_high", DateTime(timezone=True), nullable=True),
    Column("c2_text", String(500), nullable=True),
    lookups=(("c1_code",),),
)
# A token-and-date composite's rows of one code in date order, either way (a code's latest
# results: `Observation?code=x&_sort=-date`); only date composites have c2_low/c2_high.
for _column in ("c2_high", "c2_low"):
    Index(
        f"ix_search_composite_c1_{_column}",
        search_composite.c.res_type,
        search_composite.c.param,
        search_composite.c.c1_code,
        search_composite.c[_column],
        search_composite.c.res_id,
        postgresql_where=search_composite.c[_column].is_not(None),
        sqlite_where=search_composite.c[_column].is_not(None),
    )
# Reverse lookups (_revinclude, _has, compartments) go from the target to the source.
Index(
    "ix_search_reference_target",
    search_reference.c.target_id,
    search_reference.c.target_type,
    search_reference.c.res_type,
    search_reference.c.param,
    search_reference.c.res_id,
)

# Every local literal reference of each current resource version (hub.fhir.references), not
# only those a search parameter covers: a delete finds what still refers to its target here.
# Replaced with each write, like the search index rows; a deleted resource has none.
outbound_reference = Table(
    "outbound_reference",
    metadata,
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("target_type", String(64), nullable=False),
    Column("target_id", String(64), nullable=False),
    Index("ix_outbound_reference_resource", "res_type", "res_id"),
    Index("ix_outbound_reference_target", "target_type", "target_id", "res_type", "res_id"),
)

INDEX_TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        search_token,
        search_string,
        search_date,
        search_number,
        search_quantity,
        search_reference,
        search_uri,
        search_composite,
    )
}

# -- search parameters stored as data (hub.parameters.stored, hub.parameters.reindex) --

# One row per stored SearchParameter the registry can take: `pending` until a reindex job
# has extracted it from every resource of its bases, then `indexed`.
search_param_state = Table(
    "search_param_state",
    metadata,
    Column("resource_id", String(64), primary_key=True),
    Column("url", String(500), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("definition_hash", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("updated", DateTime(timezone=True), nullable=False),
)
# One row (id 1): its version changes whenever the stored parameters or their states do.
search_registry = Table(
    "search_registry",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", BigInteger, nullable=False),
)
reindex_jobs = Table(
    "reindex_jobs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("status", String(16), nullable=False),  # queued, running, completed, failed
    Column("resource_types", Text, nullable=False),  # space-separated; empty: not chosen yet
    Column("total", Integer, nullable=False),
    Column("done", Integer, nullable=False),
    Column("started", DateTime(timezone=True), nullable=False),
    Column("finished", DateTime(timezone=True), nullable=True),
    Column("error", Text, nullable=True),
    Index("ix_reindex_jobs_started", "started"),
)

# -- the message store: every inbound feed unit, raw, before it is acknowledged ----------------

messages = Table(
    "messages",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("source", String(100), nullable=False),
    Column("adapter", String(50), nullable=False),
    Column("mapping", String(100), nullable=True),
    Column("mapping_version", String(50), nullable=True),  # the mapping's version, last run
    Column("external_id", String(200), nullable=False),
    Column("content_type", String(100), nullable=True),
    Column("origin", String(500), nullable=True),  # e.g. file and line of a CSV row
    Column("order_key", String(200), nullable=True),  # same source + key: applied in id order
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("event_time", DateTime(timezone=True), nullable=True),
    Column("raw", LargeBinary, nullable=False),
    Column("status", String(12), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("error", Text, nullable=True),
    Column("produced", Text, nullable=True),  # JSON list of "Type/id/_history/n"
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # A pending message (a resource it refers to has not arrived) fails after this.
    Column("wait_until", DateTime(timezone=True), nullable=True),
    # The earlier message with the same external id (an HL7 sender's control id) and
    # other bytes: this one is stored all the same, and flagged with it.
    Column("conflicts_with", BigId, nullable=True),
    UniqueConstraint("source", "external_id", name="uq_messages_source_external"),
    Index("ix_messages_status_updated", "status", "updated_at"),
    Index("ix_messages_order", "source", "order_key", "id"),
)

# Which source field produced which element of which resource version.
lineage = Table(
    "lineage",
    metadata,
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("element", String(300), nullable=False),
    Column("source_field", String(300), nullable=False),
    Column("message_id", BigId, nullable=False),
    Column("mapping", String(100), nullable=True),
    Column("mapping_version", String(50), nullable=True),
    Index("ix_lineage_resource", "res_type", "res_id", "version_id"),
    Index("ix_lineage_message", "message_id"),
)

# What a pending message waits for: written resources look up the messages to send again.
message_waits = Table(
    "message_waits",
    metadata,
    Column("message_id", BigId, nullable=False),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Index("ix_message_waits_resource", "res_type", "res_id"),
    Index("ix_message_waits_message", "message_id"),
)
