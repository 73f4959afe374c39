"""Notifications and the work they queue, written in one transaction.

A query notification (Identity/Tag/Segment) queues one `fanout` job: the delivery engine expands
it against the bindings in resumable chunks. A direct notification (ToBinding) already names its
addresses, so its delivery rows are written right away — an address that failed validation is
recorded as a failed delivery (Twilio reports those per recipient, not as a request error).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, exists, insert, select
from sqlalchemy.engine import RowMapping

from clarion import sids
from clarion.store.clock import utcnow
from clarion.store.tables import delivery, job, notification, service

# Claim order: lower first (the delivery index is on (priority, next_attempt_at)).
PRIORITY_RANK = {"high": 0, "low": 1}


@dataclass(frozen=True, kw_only=True)
class DirectAddress:
    """One ToBinding destination; `error` is set when its address is unusable."""

    channel: str
    address: str
    error: tuple[int, str] | None = None


@dataclass(frozen=True, kw_only=True)
class NewNotification:
    targets: dict[str, list[str]]
    content: dict[str, Any]
    priority: str
    ttl: int
    delivery_callback_url: str | None
    direct: Sequence[DirectAddress]
    # The failover policy resolved for it (clarion.failover_policy, as JSON), None for none.
    # Ignored for a direct notification: its addresses have no identity to fail over for.
    failover: dict[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class Created:
    sid: str
    date_created: datetime


# Built once: creating notifications is a hot write path.
_INSERT_NOTIFICATION = insert(notification).returning(notification.c.id)
_INSERT_DELIVERY = insert(delivery)
_INSERT_JOB = insert(job)


def create(conn: Connection, *, service_id: int, new: NewNotification) -> Created:
    now = utcnow()
    sid = sids.new_sid(sids.NOTIFICATION)
    notification_id = conn.scalar(
        _INSERT_NOTIFICATION,
        {
            "sid": sid,
            "service_id": service_id,
            "targets": new.targets,
            "content": new.content,
            "priority": new.priority,
            "ttl": new.ttl,
            "expires_at": now + timedelta(seconds=new.ttl),
            "delivery_callback_url": new.delivery_callback_url,
            "failover": None if new.direct else new.failover,
            "status": "queued",
            "date_created": now,
        },
    )
    if new.direct:
        rank = PRIORITY_RANK[new.priority]
        conn.execute(
            _INSERT_DELIVERY,
            [
                {
                    "notification_id": notification_id,
                    "channel": target.channel,
                    "address": target.address,
                    "status": "failed" if target.error else "pending",
                    "priority": rank,
                    "next_attempt_at": now,
                    "error_code": str(target.error[0]) if target.error else None,
                    "error_message": target.error[1] if target.error else None,
                    "date_created": now,
                    "date_updated": now,
                }
                # One delivery per (channel, address): repeating an address must not send twice.
                for target in {(t.channel, t.address): t for t in new.direct}.values()
            ],
        )
    else:
        conn.execute(
            _INSERT_JOB,
            {
                "kind": "fanout",
                "notification_id": notification_id,
                "status": "pending",
                "run_at": now,
            },
        )
    return Created(sid=sid, date_created=now)


# What a list of notifications shows of each, newest first (the portal's debugger).
_LISTED = select(
    notification.c.id,
    notification.c.sid,
    service.c.sid.label("service_sid"),
    service.c.friendly_name.label("service_name"),
    notification.c.targets,
    notification.c.content,
    notification.c.priority,
    notification.c.status,
    notification.c.failover,
    notification.c.date_created,
    notification.c.date_completed,
).select_from(notification.join(service))


@dataclass(frozen=True, kw_only=True)
class RecentPage:
    rows: list[RowMapping]
    # The id to continue after (older notifications exist), None on the last page.
    older_than: int | None


def list_recent(
    conn: Connection,
    *,
    account_id: int,
    service_id: int | None,
    statuses: Sequence[str],
    channel: str | None,
    created_from: datetime | None,
    created_before: datetime | None,
    before_id: int | None,
    size: int,
) -> RecentPage:
    """One page of the account's notifications, newest first, keyset-paged by id.

    `channel` keeps notifications with at least one delivery on it (an EXISTS on the
    notification's deliveries, which stops at the first one).
    """
    query = _LISTED.where(service.c.account_id == account_id)
    if service_id is not None:
        query = query.where(notification.c.service_id == service_id)
    if statuses:
        query = query.where(notification.c.status.in_(statuses))
    if channel is not None:
        query = query.where(
            exists().where(
                delivery.c.notification_id == notification.c.id, delivery.c.channel == channel
            )
        )
    if created_from is not None:
        query = query.where(notification.c.date_created >= created_from)
    if created_before is not None:
        query = query.where(notification.c.date_created < created_before)
    if before_id is not None:
        query = query.where(notification.c.id < before_id)
    rows = list(conn.execute(query.order_by(notification.c.id.desc()).limit(size + 1)).mappings())
    older_than = int(rows[size - 1]["id"]) if len(rows) > size else None
    return RecentPage(rows=rows[:size], older_than=older_than)
