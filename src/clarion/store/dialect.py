"""The few statements whose spelling differs between SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite

DIALECTS = ("sqlite", "postgresql")


def insert_or_ignore(conn: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    """`INSERT … ON CONFLICT DO NOTHING` for the connection's engine."""
    return insert_or_ignore_on(conn.dialect.name, table)


def insert_or_ignore_on(dialect: str, table: Table) -> postgresql.Insert | sqlite.Insert:
    """`insert_or_ignore` by engine name, for statements built once at import."""
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()
