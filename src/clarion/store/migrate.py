"""Alembic, driven from code: `clarion migrate` and `clarion serve` apply pending migrations."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection

from clarion.store.database import Database

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


async def upgrade(database: Database, revision: str = "head") -> None:
    await database.transaction(lambda conn: command.upgrade(alembic_config(conn), revision))


async def downgrade(database: Database, revision: str = "base") -> None:
    await database.transaction(lambda conn: command.downgrade(alembic_config(conn), revision))
