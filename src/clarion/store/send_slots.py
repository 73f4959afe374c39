"""Send slots of rate-limited credentials, shared by every worker through the database.

A credential with a `RateLimit` of r messages per second gets one send slot every 1/r seconds,
across all worker processes: a worker reserves the slots a batch needs in one statement that
moves the credential's schedule (`send_slot.next_at`) forward, so no two workers ever get the
same slot and none of them needs to know how many others there are. A schedule that fell behind
the clock restarts at the present: unused time is not saved up into a burst.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Connection, Float, bindparam, case
from sqlalchemy.dialects import postgresql, sqlite

from clarion.store.tables import send_slot

# Schedules are kept as seconds since this (naive UTC, like every time the store keeps).
EPOCH = datetime(1970, 1, 1)


def reserve(
    conn: Connection, *, credential_id: int, count: int, interval: float, now: datetime
) -> list[datetime]:
    """`count` consecutive send slots of the credential, `interval` seconds apart, none before
    `now`."""
    at = (now - EPOCH).total_seconds()
    span = count * interval
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    start = bindparam("at", at, type_=Float)
    statement = (
        insert(send_slot)
        .values(credential_id=credential_id, next_at=at + span)
        .on_conflict_do_update(
            index_elements=[send_slot.c.credential_id],
            set_={
                "next_at": case((send_slot.c.next_at > start, send_slot.c.next_at), else_=start)
                + bindparam("span", span, type_=Float)
            },
        )
        .returning(send_slot.c.next_at)
    )
    end = conn.execute(statement).scalar_one()
    first = end - span
    return [EPOCH + timedelta(seconds=first + index * interval) for index in range(count)]
