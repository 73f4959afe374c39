"""The few statements whose spelling differs between SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Collection
from datetime import datetime

from sqlalchemy import ARRAY, BigInteger, ColumnElement, Connection, Table, any_, func, select
from sqlalchemy import bindparam as bind
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


def among(
    conn: Connection, column: ColumnElement[int], ids: Collection[int]
) -> ColumnElement[bool]:
    """`column IN (ids)` with the whole list bound as one value, for the queue's batches of
    hundreds of ids: SQLAlchemy processes an expanding IN's values one by one, ~3 µs each
    (1.0-1.4 ms for 333 ids against 0.2 ms as one JSON array on SQLite). SQLite reads the list
    with json_each, PostgreSQL as an array (`= ANY`)."""
    if conn.dialect.name == "postgresql":
        return column == any_(bind(None, list(ids), type_=ARRAY(BigInteger)))
    listed = func.json_each(bind(None, json.dumps(list(ids)))).table_valued("value")
    return column.in_(select(listed.c.value))
