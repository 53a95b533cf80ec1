"""Messages record the earlier message whose external id they reuse with other bytes;
raw messages are stored uncompressed on PostgreSQL.

An HL7 v2 sender that sends a control id (MSH-10) again with other content is not
resending: the second message is stored too, under its own external id, and flagged
with the first one's id (`conflicts_with`).

`messages.raw` is kept out of line but not compressed (STORAGE EXTERNAL): a message is
committed before it is acknowledged, and compressing a 3 KB HL7 message in that commit
took about 30 % of its time (docs/benchmarks.md, "HL7 v2 receiving"); the bytes on disk
cost less than the ACK latency.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("conflicts_with", BigId, nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE messages ALTER COLUMN raw SET STORAGE EXTERNAL")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE messages ALTER COLUMN raw SET STORAGE EXTENDED")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("conflicts_with")
