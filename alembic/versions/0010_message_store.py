"""Message store (every inbound feed unit, raw) and element-level lineage.

Revision ID: 0010
Revises: 0002
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0002"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "messages",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column("adapter", sa.String(50), nullable=False),
        sa.Column("mapping", sa.String(100), nullable=True),
        sa.Column("external_id", sa.String(200), nullable=False),
        sa.Column("content_type", sa.String(100), nullable=True),
        sa.Column("origin", sa.String(500), nullable=True),
        sa.Column("order_key", sa.String(200), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("raw", sa.LargeBinary, nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("produced", sa.Text, nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("source", "external_id", name="uq_messages_source_external"),
    )
    op.create_index("ix_messages_status_updated", "messages", ["status", "updated_at"])
    op.create_index("ix_messages_order", "messages", ["source", "order_key", "id"])
    op.create_table(
        "lineage",
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("element", sa.String(300), nullable=False),
        sa.Column("source_field", sa.String(300), nullable=False),
        sa.Column("message_id", BigId, nullable=False),
    )
    op.create_index("ix_lineage_resource", "lineage", ["res_type", "res_id", "version_id"])
    op.create_index("ix_lineage_message", "lineage", ["message_id"])


def downgrade() -> None:
    op.drop_table("lineage")
    op.drop_table("messages")
