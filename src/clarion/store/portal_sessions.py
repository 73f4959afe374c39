"""Portal sessions' SQL: one row per signed-in browser, found by the digest of its cookie's key.

Deleting the row is signing out: the cookie (or any copy of it) names nothing any more. Rows of
sessions left idle are deleted when their account next signs in, so the table holds about the
sessions in use.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, delete, insert, select, update

from clarion.store.tables import portal_session

# Sessions listed on the account page at most.
LISTED = 50


def key_digest(key: str) -> str:
    """What the table stores of a cookie's key: enough to find it, useless as a cookie."""
    return hashlib.sha256(("portal-session:" + key).encode()).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Found:
    account_id: int
    username: str
    last_seen: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Listed:
    key_digest: str
    username: str
    date_created: datetime
    last_seen: datetime


def create(
    conn: Connection,
    *,
    digest: str,
    account_id: int,
    username: str,
    now: datetime,
    idle_before: datetime,
) -> None:
    """Store a new session, and forget the account's sessions idle since before `idle_before`."""
    conn.execute(
        delete(portal_session).where(
            portal_session.c.account_id == account_id, portal_session.c.last_seen < idle_before
        )
    )
    conn.execute(
        insert(portal_session).values(
            key_digest=digest,
            account_id=account_id,
            username=username,
            date_created=now,
            last_seen=now,
        )
    )


def find(conn: Connection, *, digest: str) -> Found | None:
    """The session a cookie names: one primary-key lookup, on every portal request."""
    row = conn.execute(
        select(
            portal_session.c.account_id, portal_session.c.username, portal_session.c.last_seen
        ).where(portal_session.c.key_digest == digest)
    ).first()
    return None if row is None else Found(**row._mapping)


def touch(conn: Connection, *, digest: str, now: datetime) -> None:
    conn.execute(
        update(portal_session).where(portal_session.c.key_digest == digest).values(last_seen=now)
    )


def end(conn: Connection, *, digest: str) -> None:
    conn.execute(delete(portal_session).where(portal_session.c.key_digest == digest))


def end_all(conn: Connection, *, account_id: int) -> int:
    """Sign the account out everywhere; how many sessions that ended."""
    result = conn.execute(delete(portal_session).where(portal_session.c.account_id == account_id))
    return int(result.rowcount)


def list_active(conn: Connection, *, account_id: int, idle_before: datetime) -> list[Listed]:
    """The account's sessions still in use, most recently seen first."""
    rows = conn.execute(
        select(
            portal_session.c.key_digest,
            portal_session.c.username,
            portal_session.c.date_created,
            portal_session.c.last_seen,
        )
        .where(portal_session.c.account_id == account_id, portal_session.c.last_seen >= idle_before)
        .order_by(portal_session.c.last_seen.desc())
        .limit(LISTED)
    ).all()
    return [Listed(**row._mapping) for row in rows]
