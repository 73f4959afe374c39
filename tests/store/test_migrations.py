"""Migrations build exactly the schema the code declares, and can be undone, on both engines.

Each test gets a brand-new database (not the session one the other tests share), because
downgrading to base drops every table.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect

from clarion.store import migrate
from clarion.store.database import Database
from clarion.store.tables import metadata

POSTGRES_ADMIN_URL = os.environ.get(
    "CLARION_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


async def postgres_admin(sql: str) -> None:
    conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def fresh_database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """An empty database of its own, removed afterwards."""
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path / 'migrations.db'}")
        yield database
        await database.close()
        return
    name = f"clarion_migrations_{secrets.token_hex(4)}"
    await postgres_admin(f'CREATE DATABASE "{name}"')
    database = Database(POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}")
    try:
        yield database
    finally:
        await database.close()
        await postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def head_revision() -> str:
    head = ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()
    assert head is not None
    return head


async def schema_differences(database: Database) -> list[Any]:
    """What `alembic revision --autogenerate` would write to make the database match the code."""

    def compare(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    return await database.read(compare)


async def current_revision(database: Database) -> str | None:
    return await database.read(lambda conn: MigrationContext.configure(conn).get_current_revision())


async def table_names(database: Database) -> set[str]:
    names = await database.read(lambda conn: inspect(conn).get_table_names())
    return set(names) - {"alembic_version"}


async def test_upgrade_builds_the_declared_schema(fresh_database: Database) -> None:
    await migrate.upgrade(fresh_database)
    assert await current_revision(fresh_database) == head_revision()
    assert await table_names(fresh_database) == set(metadata.tables)
    assert await schema_differences(fresh_database) == []


async def test_downgrade_to_base_then_upgrade_rebuilds_the_same_schema(
    fresh_database: Database,
) -> None:
    """A downgrade that leaves debris (types, indexes, sequences) breaks the next upgrade."""
    await migrate.upgrade(fresh_database)
    await migrate.downgrade(fresh_database, "base")
    assert await current_revision(fresh_database) is None
    assert await table_names(fresh_database) == set()
    await migrate.upgrade(fresh_database)
    assert await current_revision(fresh_database) == head_revision()
    assert await schema_differences(fresh_database) == []


async def test_upgrade_is_idempotent(fresh_database: Database) -> None:
    """`clarion serve` upgrades on every start; an up-to-date database must be left alone."""
    await migrate.upgrade(fresh_database)
    await migrate.upgrade(fresh_database)
    assert await current_revision(fresh_database) == head_revision()
    assert await schema_differences(fresh_database) == []
