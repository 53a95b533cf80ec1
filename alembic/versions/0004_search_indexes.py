"""Search indexes for large stores: covering lookups, live resources, planner statistics.

Measured with bench/search.py at 1M resources (docs/benchmarks.md, "Search"):

- Every lookup index of the search_* tables ends with `res_id`. A criterion's sub-select
  (`SELECT res_id FROM search_token WHERE res_type = .. AND param = .. AND code = ..`) is
  then an index-only scan instead of one heap visit per matching row (52,000 scattered heap
  pages for a common LOINC code), and equal-prefix scans come out ordered by `res_id`, which
  lets the page query (ORDER BY res_id LIMIT n) merge instead of sort. The reverse reference
  index also covers the source's type, parameter and id (`_has`, `_revinclude`,
  compartments).
- `ix_resources_live`: (res_type, res_id) of live resources. `resources` carries each
  version's JSON inline, so any scan of it reads the whole table (1 GB at 1M resources);
  counts and id semi-joins over live resources become index-only scans.
- PostgreSQL extended statistics on the columns every search filters together
  (res_type, param, and for tokens system and code): the planner otherwise multiplies
  their selectivities as if independent and underestimates a common code 30-fold
  (1,939 rows estimated, 52,623 found), choosing nested loops that take seconds.

Rebuilding the indexes takes about two minutes at 1M resources and blocks writes meanwhile.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Lookup indexes as 0002 made them: (res_type, param, *columns), now followed by res_id.
LOOKUPS: dict[str, tuple[tuple[str, ...], ...]] = {
    "search_token": (("code", "system"),),
    "search_string": (("value",),),
    "search_date": (("low",), ("high",)),
    "search_number": (("value",),),
    "search_quantity": (("code", "value"),),
    "search_reference": (("target_id",),),
    "search_uri": (("value",),),
    "search_composite": (("c1_code",),),
}
PREFIX = ("search_string", "search_uri")  # PostgreSQL: LIKE 'x%' needs text_pattern_ops
STATISTICS = {
    "search_token": ("res_type", "param", "system", "code"),
    "search_string": ("res_type", "param"),
    "search_date": ("res_type", "param"),
    "search_number": ("res_type", "param"),
    "search_quantity": ("res_type", "param", "system", "code"),
    "search_reference": ("res_type", "param", "target_type"),
    "search_uri": ("res_type", "param"),
    "search_composite": ("res_type", "param", "c1_system", "c1_code"),
}
LIVE_WHERE = {"postgresql": "deleted IS false", "sqlite": "deleted IS 0"}


def _lookups(with_id: bool) -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    tail = ["res_id"] if with_id else []
    for table, lookups in LOOKUPS.items():
        for columns in lookups:
            name = f"ix_{table}_{'_'.join(columns)}"
            op.drop_index(name, table_name=table)
            op.create_index(name, table, ["res_type", "param", *columns, *tail])
    target = ["target_id", "target_type", *(["res_type", "param", "res_id"] if with_id else [])]
    op.drop_index("ix_search_reference_target", table_name="search_reference")
    op.create_index("ix_search_reference_target", "search_reference", target)
    if postgresql:
        for table in PREFIX:
            op.execute(f"DROP INDEX ix_{table}_prefix")
            op.execute(
                f"CREATE INDEX ix_{table}_prefix ON {table} "
                f"(res_type, param, value text_pattern_ops{', res_id' if with_id else ''})"
            )


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    _lookups(with_id=True)
    op.create_index(
        "ix_resources_live",
        "resources",
        ["res_type", "res_id"],
        postgresql_where=sa.text(LIVE_WHERE["postgresql"]),
        sqlite_where=sa.text(LIVE_WHERE["sqlite"]),
    )
    if dialect == "postgresql":
        for table, columns in STATISTICS.items():
            op.execute(
                f"CREATE STATISTICS st_{table} (mcv, dependencies) "
                f"ON {', '.join(columns)} FROM {table}"
            )
        # Room for the common (type, parameter, system, code) combinations of a real store.
        op.execute("ALTER STATISTICS st_search_token SET STATISTICS 1000")
        for table in ("resources", *STATISTICS):
            op.execute(f"ANALYZE {table}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in STATISTICS:
            op.execute(f"DROP STATISTICS IF EXISTS st_{table}")
    op.drop_index("ix_resources_live", table_name="resources")
    _lookups(with_id=False)
