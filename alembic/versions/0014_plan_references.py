"""Every local literal reference of each current resource: referential integrity.

A delete is refused while live resources still reference its target, and the search
index only holds the references some search parameter covers. `outbound_reference`
holds all of them (hub.fhir.references.targets: references to a version excepted, as the
version stays in history), replaced with each write; this migration fills
it from the live resources already stored, reading them 1,000 at a time (each one's JSON
is parsed and walked: the time grows with the store). References in the absolute form with the server's base URL are
recorded only from writes on: the base URL is not known here.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

import orjson
import sqlalchemy as sa
from alembic import op

from hub.fhir.references import targets

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

BATCH = 1000


def upgrade() -> None:
    table = op.create_table(
        "outbound_reference",
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.Column("target_type", sa.String(64), nullable=False),
        sa.Column("target_id", sa.String(64), nullable=False),
    )
    resources = sa.table(
        "resources",
        sa.column("res_type", sa.String),
        sa.column("res_id", sa.String),
        sa.column("deleted", sa.Boolean),
        sa.column("content", sa.LargeBinary),
    )
    bind = op.get_bind()
    query = (
        sa.select(resources.c.res_type, resources.c.res_id, resources.c.content)
        .where(resources.c.deleted.is_(False))
        .order_by(resources.c.res_type, resources.c.res_id)
    )
    last: tuple[str, str] | None = None
    while True:
        # Keyset pages: no cursor is held open while the rows of a page are inserted.
        page = query if last is None else query.where(
            sa.tuple_(resources.c.res_type, resources.c.res_id) > sa.tuple_(*last)
        )
        found = bind.execute(page.limit(BATCH)).all()
        if not found:
            break
        rows = [
            {"res_type": t, "res_id": i, "target_type": tt, "target_id": ti}
            for t, i, content in found
            if content is not None
            for tt, ti in targets(orjson.loads(content))
        ]
        if rows:
            bind.execute(table.insert(), rows)
        last = (found[-1][0], found[-1][1])
    op.create_index(
        "ix_outbound_reference_resource", "outbound_reference", ["res_type", "res_id"]
    )
    op.create_index(
        "ix_outbound_reference_target",
        "outbound_reference",
        ["target_type", "target_id", "res_type", "res_id"],
    )


def downgrade() -> None:
    op.drop_table("outbound_reference")
