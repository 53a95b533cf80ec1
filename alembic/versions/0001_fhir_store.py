"""FHIR store: current resources, version history, token index.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "resources",
        sa.Column("res_type", sa.String(64), primary_key=True),
        sa.Column("res_id", sa.String(64), primary_key=True),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=True),
        sa.Column("content", sa.LargeBinary, nullable=True),
    )
    op.create_index("ix_resources_type_updated", "resources", ["res_type", "last_updated"])
    op.create_table(
        "resource_history",
        sa.Column("seq", BigId, primary_key=True, autoincrement=True),
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=True),
        sa.Column("content", sa.LargeBinary, nullable=True),
        sa.UniqueConstraint("res_type", "res_id", "version_id", name="uq_history_version"),
    )
    op.create_index("ix_history_type_seq", "resource_history", ["res_type", "seq"])
    op.create_index("ix_history_updated", "resource_history", ["last_updated"])
    op.create_table(
        "search_token",
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.Column("param", sa.String(100), nullable=False),
        sa.Column("system", sa.String(500), nullable=True),
        sa.Column("code", sa.String(500), nullable=True),
    )
    op.create_index("ix_token_lookup", "search_token", ["res_type", "param", "code", "system"])
    op.create_index("ix_token_resource", "search_token", ["res_type", "res_id"])


def downgrade() -> None:
    op.drop_table("search_token")
    op.drop_table("resource_history")
    op.drop_table("resources")
