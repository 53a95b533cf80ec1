"""Typed search index tables: string, date, number, quantity, reference, uri, composite.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _table(name: str, *columns: sa.Column, lookups: tuple[tuple[str, ...], ...]) -> None:
    op.create_table(
        name,
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.Column("param", sa.String(100), nullable=False),
        *columns,
    )
    op.create_index(f"ix_{name}_resource", name, ["res_type", "res_id"])
    for cols in lookups:
        op.create_index(f"ix_{name}_{'_'.join(cols)}", name, ["res_type", "param", *cols])


def upgrade() -> None:
    # search_token keeps its rows; its indexes take the names the other tables use.
    op.drop_index("ix_token_lookup", table_name="search_token")
    op.drop_index("ix_token_resource", table_name="search_token")
    op.create_index("ix_search_token_resource", "search_token", ["res_type", "res_id"])
    op.create_index(
        "ix_search_token_code_system", "search_token", ["res_type", "param", "code", "system"]
    )
    _table(
        "search_string",
        sa.Column("value", sa.String(500), nullable=False),
        sa.Column("exact", sa.String(500), nullable=False),
        lookups=(("value",),),
    )
    _table(
        "search_date",
        sa.Column("low", sa.DateTime(timezone=True), nullable=False),
        sa.Column("high", sa.DateTime(timezone=True), nullable=False),
        lookups=(("low",), ("high",)),
    )
    _table("search_number", sa.Column("value", sa.Float, nullable=False), lookups=(("value",),))
    _table(
        "search_quantity",
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("system", sa.String(500), nullable=True),
        sa.Column("code", sa.String(500), nullable=True),
        sa.Column("unit", sa.String(500), nullable=True),
        lookups=(("code", "value"),),
    )
    _table(
        "search_reference",
        sa.Column("target_type", sa.String(64), nullable=True),
        sa.Column("target_id", sa.String(500), nullable=False),
        sa.Column("url", sa.String(500), nullable=False),
        lookups=(("target_id",),),
    )
    op.create_index("ix_search_reference_target", "search_reference", ["target_id", "target_type"])
    _table("search_uri", sa.Column("value", sa.String(500), nullable=False), lookups=(("value",),))
    _table(
        "search_composite",
        sa.Column("c1_system", sa.String(500), nullable=True),
        sa.Column("c1_code", sa.String(500), nullable=True),
        sa.Column("c2_system", sa.String(500), nullable=True),
        sa.Column("c2_code", sa.String(500), nullable=True),
        sa.Column("c2_value", sa.Float, nullable=True),
        sa.Column("c2_low", sa.DateTime(timezone=True), nullable=True),
        sa.Column("c2_high", sa.DateTime(timezone=True), nullable=True),
        sa.Column("c2_text", sa.String(500), nullable=True),
        lookups=(("c1_code",),),
    )
    if op.get_bind().dialect.name == "postgresql":
        # LIKE 'prefix%' can use a btree only with pattern operators (any collation).
        op.execute(
            "CREATE INDEX ix_search_string_prefix ON search_string "
            "(res_type, param, value text_pattern_ops)"
        )
        op.execute(
            "CREATE INDEX ix_search_uri_prefix ON search_uri (res_type, param, value text_pattern_ops)"
        )


def downgrade() -> None:
    for name in (
        "search_composite",
        "search_uri",
        "search_reference",
        "search_quantity",
        "search_number",
        "search_date",
        "search_string",
    ):
        op.drop_table(name)
    op.drop_index("ix_search_token_code_system", table_name="search_token")
    op.drop_index("ix_search_token_resource", table_name="search_token")
    op.create_index("ix_token_lookup", "search_token", ["res_type", "param", "code", "system"])
    op.create_index("ix_token_resource", "search_token", ["res_type", "res_id"])
