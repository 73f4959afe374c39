"""Changes to rows that belong to an account and are addressed by SID.

The account filter is part of every statement, so a SID of another account changes nothing and
answers exactly like one that does not exist.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Table, delete, update

from clarion import errors
from clarion.store.clock import utcnow


def update_owned(
    conn: Connection, table: Table, *, account_id: int, sid: str, values: dict[str, Any]
) -> None:
    result = conn.execute(
        update(table)
        .where(table.c.account_id == account_id, table.c.sid == sid)
        .values(**values, date_updated=utcnow())
    )
    if result.rowcount == 0:
        raise errors.not_found()


def delete_owned(conn: Connection, table: Table, *, account_id: int, sid: str) -> None:
    result = conn.execute(delete(table).where(table.c.account_id == account_id, table.c.sid == sid))
    if result.rowcount == 0:
        raise errors.not_found()
