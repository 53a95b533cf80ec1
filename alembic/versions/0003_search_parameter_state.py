"""Search parameters as data: per-parameter reindex state, registry version, reindex jobs.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "search_param_state",
        sa.Column("resource_id", sa.String(64), primary_key=True),
        sa.Column("url", sa.String(500), nullable=False),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("definition_hash", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
    )
    registry = op.create_table(
        "search_registry",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("version", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(registry, [{"id": 1, "version": 0}])
    op.create_table(
        "reindex_jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("resource_types", sa.Text, nullable=False),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("done", sa.Integer, nullable=False),
        sa.Column("started", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
    )
    op.create_index("ix_reindex_jobs_started", "reindex_jobs", ["started"])


def downgrade() -> None:
    op.drop_index("ix_reindex_jobs_started", table_name="reindex_jobs")
    op.drop_table("reindex_jobs")
    op.drop_table("search_registry")
    op.drop_table("search_param_state")
