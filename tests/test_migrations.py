"""Migrations that fill data for what is already stored. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

from conftest import MIGRATIONS
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from hub.interactions.context import Context
from hub.store.migrate import downgrade, upgrade
from hub.store.schema import search_composite

FHIR = {"Content-Type": "application/fhir+json"}


def test_code_date_migration_fills_the_composite_of_stored_observations(
    client: TestClient, ctx: Context, database_url: str
) -> None:
    engine = ctx.repo.engine  # type: ignore[attr-defined]

    def rows() -> list[tuple[str, ...]]:
        stmt = select(
            search_composite.c.res_id,
            search_composite.c.c1_system,
            search_composite.c.c1_code,
            search_composite.c.c2_low,
            search_composite.c.c2_high,
        ).where(search_composite.c.param == "code-date")
        with engine.connect() as conn:
            return sorted(tuple(map(str, r)) for r in conn.execute(stmt))

    for i, when in enumerate(("2024-01-10", "2024-02-11T08:00:00Z")):
        body = {
            "resourceType": "Observation",
            "status": "final",
            "code": {
                "coding": [
                    {"system": "http://loinc.org", "code": f"100{i}-1"},
                    {"system": "http://example.org/labs", "code": f"L{i}"},
                ]
            },
            "effectiveDateTime": when,
        }
        assert client.post("/fhir/Observation", json=body, headers=FHIR).status_code == 201
    written = rows()
    assert len(written) == 4  # each coding with the date
    downgrade(database_url, MIGRATIONS, "0011")  # a store written before 0012
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(search_composite)) == 0
    upgrade(database_url, MIGRATIONS)
    assert rows() == written
