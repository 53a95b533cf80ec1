"""Feed messages wait for the resources they refer to; mapping versions are recorded.

A message whose resources refer to one that has not arrived is `pending` until
`wait_until`; `message_waits` names what it waits for, so that a written
resource finds the messages to send again by an index, not a scan. The
mapping's version is kept on the message and on each lineage row.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("mapping_version", sa.String(50), nullable=True))
        batch.add_column(sa.Column("wait_until", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("lineage") as batch:
        batch.add_column(sa.Column("mapping", sa.String(100), nullable=True))
        batch.add_column(sa.Column("mapping_version", sa.String(50), nullable=True))
    op.create_table(
        "message_waits",
        sa.Column("message_id", BigId, nullable=False),
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
    )
    op.create_index("ix_message_waits_resource", "message_waits", ["res_type", "res_id"])
    op.create_index("ix_message_waits_message", "message_waits", ["message_id"])


def downgrade() -> None:
    op.drop_table("message_waits")
    with op.batch_alter_table("lineage") as batch:
        batch.drop_column("mapping_version")
        batch.drop_column("mapping")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("wait_until")
        batch.drop_column("mapping_version")
