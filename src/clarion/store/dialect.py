"""The few statements whose spelling differs between SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime

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


def sqlite_time(value: datetime) -> str:
    """A (naive UTC) time as SQLAlchemy stores it in SQLite, for the few statements that hand
    rows straight to sqlite3: stored times are compared as these strings, so the format must be
    exactly SQLAlchemy's (microseconds always written)."""
    return f"{value:%Y-%m-%d %H:%M:%S.%f}"
