"""What an account's deliveries looked like over a recent window: the portal's dashboard.

Aggregates only, grouped in the database into time buckets (hours or days), so the answer is a
few hundred rows whatever the traffic. Deliveries are found through the account's services and
their notifications of the window (the notification index by service, then each notification's
deliveries), never by scanning every delivery of the instance.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, func, select

from clarion.store.tables import binding, delivery, notification, service

# How a bucket is spelled: the same text on both engines, e.g. 2026-05-01T14 or 2026-05-01.
_SQLITE_FORMATS = {"hour": "%Y-%m-%dT%H", "day": "%Y-%m-%d"}
_POSTGRES_FORMATS = {"hour": 'YYYY-MM-DD"T"HH24', "day": "YYYY-MM-DD"}
TOP_ERRORS = 8


def bucket(conn: Connection, column: ColumnElement[Any], unit: str) -> ColumnElement[str]:
    """`column` truncated to its hour or day, as text."""
    if conn.dialect.name == "postgresql":
        return func.to_char(column, _POSTGRES_FORMATS[unit])
    return func.strftime(_SQLITE_FORMATS[unit], column)


@dataclass(frozen=True, kw_only=True)
class Activity:
    # (bucket, channel) → deliveries created then.
    per_channel: dict[tuple[str, str], int]
    # status → deliveries of the window.
    by_status: dict[str, int]
    # (channel, error code, count), most frequent first.
    top_errors: list[tuple[str, str, int]]
    # (bucket, binding type) → bindings a provider retired then.
    retired: dict[tuple[str, str], int]


def activity(conn: Connection, *, account_id: int, since: datetime, unit: str) -> Activity:
    """The account's deliveries and retired bindings since `since`, by `unit` (hour or day)."""
    joined = delivery.join(notification).join(service)
    scope = (
        service.c.account_id == account_id,
        notification.c.date_created >= since,
        delivery.c.date_created >= since,
    )
    at = bucket(conn, delivery.c.date_created, unit).label("at")
    per_channel = {
        (row.at, row.channel): row.n
        for row in conn.execute(
            select(at, delivery.c.channel, func.count().label("n"))
            .select_from(joined)
            .where(*scope)
            .group_by(at, delivery.c.channel)
        )
    }
    by_status: dict[str, int] = {
        row.status: row.n
        for row in conn.execute(
            select(delivery.c.status, func.count().label("n"))
            .select_from(joined)
            .where(*scope)
            .group_by(delivery.c.status)
        )
    }
    count = func.count().label("n")
    top_errors = [
        (row.channel, row.error_code, row.n)
        for row in conn.execute(
            select(delivery.c.channel, delivery.c.error_code, count)
            .select_from(joined)
            .where(*scope, delivery.c.status == "failed", delivery.c.error_code.is_not(None))
            .group_by(delivery.c.channel, delivery.c.error_code)
            .order_by(count.desc(), delivery.c.channel, delivery.c.error_code)
            .limit(TOP_ERRORS)
        )
    ]
    retired_at = bucket(conn, binding.c.inactive_since, unit).label("at")
    retired = {
        (row.at, row.binding_type): row.n
        for row in conn.execute(
            select(retired_at, binding.c.binding_type, func.count().label("n"))
            .select_from(binding.join(service))
            .where(service.c.account_id == account_id, binding.c.inactive_since >= since)
            .group_by(retired_at, binding.c.binding_type)
        )
    }
    return Activity(
        per_channel=per_channel, by_status=by_status, top_errors=top_errors, retired=retired
    )
