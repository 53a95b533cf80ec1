"""Observation `code-date`: a code and its date in one index row, filled for stored data.

Searches combining an Observation's code with its date (`code=x&date=ge2024`,
`code=x&_sort=-date`) intersected two large sets of index rows, one per table; the hub's
own composite parameter `code-date` (hub/search/definitions.json) holds both values in
one row, and these indexes read a code's rows in date order. Writes fill it from now on;
this migration fills it for the Observations already stored, from their own `code` token
and `date` rows: exactly what extraction writes (each coding of the code with the one date).

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

COLUMNS = ("c2_high", "c2_low")


def upgrade() -> None:
    op.execute(
        "INSERT INTO search_composite "
        "(res_type, res_id, param, c1_system, c1_code, c2_low, c2_high) "
        "SELECT t.res_type, t.res_id, 'code-date', t.system, t.code, d.low, d.high "
        "FROM search_token t JOIN search_date d "
        "ON d.res_type = t.res_type AND d.res_id = t.res_id AND d.param = 'date' "
        "WHERE t.res_type = 'Observation' AND t.param = 'code' AND NOT EXISTS ("
        "SELECT 1 FROM search_composite c WHERE c.res_type = t.res_type AND c.res_id = t.res_id "
        "AND c.param = 'code-date')"
    )
    for column in COLUMNS:
        where = sa.text(f"{column} IS NOT NULL")
        op.create_index(
            f"ix_search_composite_c1_{column}",
            "search_composite",
            ["res_type", "param", "c1_code", column, "res_id"],
            postgresql_where=where,
            sqlite_where=where,
        )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ANALYZE search_composite")


def downgrade() -> None:
    for column in COLUMNS:
        op.drop_index(f"ix_search_composite_c1_{column}", table_name="search_composite")
    op.execute("DELETE FROM search_composite WHERE param = 'code-date'")
