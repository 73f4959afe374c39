"""Delivery records as the API and the debugger read them: one notification's summary and its
deliveries, never loaded whole (a notification may have hundreds of thousands)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    ScalarSelect,
    exists,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import RowMapping

from clarion import errors
from clarion.store import failover
from clarion.store.dialect import among
from clarion.store.paging import PageRequest, PageResult, fetch_page
from clarion.store.tables import binding, delivery, delivery_event, notification, service

_NOTIFICATION = select(
    notification.c.id,
    notification.c.sid,
    notification.c.targets,
    notification.c.content,
    notification.c.priority,
    notification.c.ttl,
    notification.c.status,
    notification.c.delivery_callback_url,
    notification.c.date_created,
    notification.c.date_completed,
)

# Receipts (issue 4): a device app's word that a push arrived or was opened, one event each.
RECEIPT_STATES = ("delivered", "opened")
_RECEIPT_STATE = delivery_event.c.detail["state"].as_string()


def _of_receipts(aggregate: ColumnElement[Any]) -> ScalarSelect[Any]:
    """`aggregate` over the receipts of the delivery row beside it (an index range per row)."""
    return (
        select(aggregate)
        .where(delivery_event.c.delivery_id == delivery.c.id, delivery_event.c.kind == "receipt")
        .scalar_subquery()
    )


_DELIVERY = select(
    delivery.c.id,
    binding.c.sid.label("binding_sid"),
    delivery.c.identity,
    delivery.c.channel,
    delivery.c.address,
    delivery.c.status,
    delivery.c.attempts,
    delivery.c.provider_ref,
    delivery.c.error_code,
    delivery.c.error_message,
    delivery.c.failover_of,
    delivery.c.failover_step,
    delivery.c.failover_reason,
    delivery.c.date_created,
    delivery.c.date_updated,
    delivery.c.date_sent,
    # "opened" sorts after "delivered": the furthest state reported is the greatest.
    _of_receipts(func.max(_RECEIPT_STATE)).label("receipt_state"),
    _of_receipts(func.min(delivery_event.c.at)).label("date_confirmed"),
).select_from(delivery.outerjoin(binding, binding.c.id == delivery.c.binding_id))


def notification_with_counts(
    conn: Connection, *, service_id: int, sid: str
) -> tuple[RowMapping, dict[str, dict[str, int]]]:
    """The notification and its delivery counts as {channel: {status: n}}: one indexed scan."""
    row = (
        conn.execute(
            _NOTIFICATION.where(notification.c.service_id == service_id, notification.c.sid == sid)
        )
        .mappings()
        .first()
    )
    if row is None:
        raise errors.not_found()
    counts: dict[str, dict[str, int]] = {}
    for channel, status, count in conn.execute(
        select(delivery.c.channel, delivery.c.status, func.count())
        .where(delivery.c.notification_id == row["id"])
        .group_by(delivery.c.channel, delivery.c.status)
    ):
        counts.setdefault(channel, {})[status] = count
    return row, counts


def notification_id(conn: Connection, *, service_id: int, sid: str) -> int:
    found = conn.scalar(
        select(notification.c.id).where(
            notification.c.service_id == service_id, notification.c.sid == sid
        )
    )
    if found is None:
        raise errors.not_found()
    return int(found)


def list_page(
    conn: Connection,
    *,
    notification_id: int,
    statuses: Sequence[str],
    channels: Sequence[str],
    page: PageRequest,
) -> PageResult:
    query = _DELIVERY.where(delivery.c.notification_id == notification_id)
    if statuses:
        query = query.where(delivery.c.status.in_(statuses))
    if channels:
        query = query.where(delivery.c.channel.in_(channels))
    return fetch_page(conn, query, delivery.c.id, page)


def get(conn: Connection, *, notification_id: int, delivery_id: int) -> dict[str, Any]:
    row = (
        conn.execute(
            _DELIVERY.where(
                delivery.c.notification_id == notification_id, delivery.c.id == delivery_id
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        raise errors.not_found()
    return dict(row)


# A provider's later word on a message it accepted (an SMS status callback, a Messenger delivery
# webhook) moves the delivery on from `sent`, and only forward: reports arrive late, twice and
# out of order.
REPORTABLE = {"delivered": ("sent",), "failed": ("sent",)}


def deliver_receipted_early(conn: Connection, *, sent_ids: Sequence[int]) -> None:
    """Of deliveries just stored as `sent`, make `delivered` those whose receipt came first
    (`record_receipt` left them `sending`): the device had the push before the worker stored
    the provider's answer. (A carrier's report cannot come first: it names the provider's
    message id, which is stored with the answer.)"""
    if sent_ids:
        conn.execute(
            update(delivery)
            .where(
                among(conn, delivery.c.id, sent_ids),
                exists().where(
                    delivery_event.c.delivery_id == delivery.c.id,
                    delivery_event.c.kind == "receipt",
                ),
            )
            .values(status="delivered")
        )


def record_provider_report(
    conn: Connection,
    *,
    account_id: int | None,
    channel: str,
    provider_ref: str,
    status: str | None,
    error_code: str | None,
    error_message: str | None,
    now: datetime,
) -> bool:
    """Apply a report on the message `provider_ref`; False when no delivery of the account has it.

    `account_id` None looks in every account: only for webhooks signed with a secret no account
    owns (the sandbox's).

    `status` None records the report in the delivery's history without changing its state
    (e.g. Twilio's intermediate `sent`).
    """
    query = select(delivery.c.id, delivery.c.status).where(
        delivery.c.provider_ref == provider_ref, delivery.c.channel == channel
    )
    if account_id is not None:
        query = query.select_from(delivery.join(notification).join(service)).where(
            service.c.account_id == account_id
        )
    row = conn.execute(query).first()
    if row is None:
        return False
    _apply_report(
        conn,
        delivery_id=row.id,
        current=row.status,
        status=status,
        error_code=error_code,
        error_message=error_message,
        now=now,
    )
    return True


def record_delivered_until(
    conn: Connection,
    *,
    account_id: int | None,
    binding_type: str,
    address: str,
    watermark: datetime,
    now: datetime,
) -> int:
    """Every `sent` delivery to the binding at `address` that was sent by `watermark` is
    delivered (a Messenger watermark, which names no message); how many there were.

    Found through the stored bindings (the unique service/type/address index, then the
    binding's deliveries), so a report costs a few index lookups whatever the table's size;
    ToBinding deliveries have no binding and are only reached by their message id. A `sent`
    delivery's `date_updated` is when the provider took it. `account_id` as for
    `record_provider_report`.
    """
    query = (
        select(delivery.c.id, delivery.c.status)
        .select_from(
            binding.join(delivery, delivery.c.binding_id == binding.c.id).join(
                service, service.c.id == binding.c.service_id
            )
        )
        .where(
            binding.c.binding_type == binding_type,
            binding.c.address == address,
            delivery.c.channel == binding_type,
            delivery.c.status == "sent",
            delivery.c.date_updated <= watermark,
        )
    )
    if account_id is not None:
        query = query.where(service.c.account_id == account_id)
    rows = conn.execute(query).all()
    for row in rows:
        _apply_report(
            conn,
            delivery_id=row.id,
            current=row.status,
            status="delivered",
            error_code=None,
            error_message=None,
            now=now,
        )
    return len(rows)


def _apply_report(
    conn: Connection,
    *,
    delivery_id: int,
    current: str,
    status: str | None,
    error_code: str | None,
    error_message: str | None,
    now: datetime,
) -> None:
    """Record one provider report on a delivery now `current`, and act on it."""
    detail = {"status": status, "error_code": error_code, "error_message": error_message}
    conn.execute(
        insert(delivery_event).values(
            delivery_id=delivery_id,
            at=now,
            kind="provider_report",
            detail={key: value for key, value in detail.items() if value is not None},
        )
    )
    if status is not None and current in REPORTABLE.get(status, ()):
        values: dict[str, Any] = {"status": status, "date_updated": now}
        if status == "failed":
            values |= {"error_code": error_code, "error_message": error_message}
        conn.execute(update(delivery).where(delivery.c.id == delivery_id).values(**values))
        if status == "failed":
            # The carrier gave up on it: failover moves on at once if its whole group failed.
            failover.after_failures(conn, delivery_ids=[delivery_id], now=now)
    if status == "delivered":
        # The carrier's word counts as a sign of life, like an app's receipt (failover).
        failover.confirm(conn, delivery_id=delivery_id, now=now)


@dataclass(frozen=True, kw_only=True)
class Receipt:
    """A recorded receipt: the same answer however often the app sends it."""

    delivery_id: int
    state: str
    date_created: datetime
    # The delivery's first receipt: the moment it became confirmed.
    first: bool


def record_receipt(
    conn: Connection,
    *,
    service_sid: str,
    notification_sid: str,
    delivery_id: int,
    state: str,
    now: datetime,
) -> Receipt:
    """Record that the app got (`delivered`) or opened (`opened`) delivery `delivery_id`.

    Not found unless the delivery is one of that notification of that service. Each state is
    recorded once; a repeat answers with the first record. A `sent` delivery becomes
    `delivered` (opened implies delivered); no other status changes: never backwards, and a
    receipt after the delivery failed or expired goes into its history only.
    """
    status = conn.scalar(
        select(delivery.c.status)
        .select_from(delivery.join(notification).join(service))
        .where(
            delivery.c.id == delivery_id,
            notification.c.sid == notification_sid,
            service.c.sid == service_sid,
        )
        # Copies of one receipt arriving at once queue here, so each state is recorded once.
        .with_for_update(of=delivery)
    )
    if status is None:
        raise errors.not_found()
    earlier: dict[str, datetime] = {}
    for detail, at in conn.execute(
        select(delivery_event.c.detail, delivery_event.c.at)
        .where(delivery_event.c.delivery_id == delivery_id, delivery_event.c.kind == "receipt")
        .order_by(delivery_event.c.id)
    ):
        earlier.setdefault(detail["state"], at)
    if state in earlier:
        return Receipt(
            delivery_id=delivery_id, state=state, date_created=earlier[state], first=False
        )
    conn.execute(
        insert(delivery_event).values(
            delivery_id=delivery_id, at=now, kind="receipt", detail={"state": state}
        )
    )
    if status in REPORTABLE["delivered"]:
        conn.execute(
            update(delivery)
            .where(delivery.c.id == delivery_id)
            .values(status="delivered", date_updated=now)
        )
    return Receipt(delivery_id=delivery_id, state=state, date_created=now, first=not earlier)


def events(conn: Connection, *, delivery_id: int) -> list[dict[str, Any]]:
    """The delivery's history, oldest first: attempts, the providers' answers, reports and
    receipts (the caller has checked the delivery is the account's, e.g. with `get`).

    The send itself is not an event row but the delivery's `date_sent` (clarion.store.queue):
    it is shown as a `sent` event in its place in time.
    """
    history = [
        dict(row)
        for row in conn.execute(
            select(delivery_event.c.at, delivery_event.c.kind, delivery_event.c.detail)
            .where(delivery_event.c.delivery_id == delivery_id)
            .order_by(delivery_event.c.id)
        ).mappings()
    ]
    sent = conn.execute(
        select(
            delivery.c.date_sent, delivery.c.attempts, delivery.c.provider_ref, delivery.c.ambiguous
        ).where(delivery.c.id == delivery_id, delivery.c.date_sent.is_not(None))
    ).first()
    if sent is not None:
        detail: dict[str, Any] = {"attempt": sent.attempts}
        if sent.ambiguous:
            detail["ambiguous"] = True
        if sent.provider_ref is not None:
            detail["provider_ref"] = sent.provider_ref
        place = sum(1 for event in history if event["at"] <= sent.date_sent)
        history.insert(place, {"at": sent.date_sent, "kind": "sent", "detail": detail})
    return history


def failover_chain(conn: Connection, *, notification_id: int, identity: str) -> list[RowMapping]:
    """Every delivery of one identity's failover chain in a notification, group by group (the
    failover index: a few rows however large the notification)."""
    return list(
        conn.execute(
            _DELIVERY.where(
                delivery.c.notification_id == notification_id,
                delivery.c.identity == identity,
                delivery.c.failover_step.is_not(None),
            ).order_by(delivery.c.failover_step, delivery.c.id)
        ).mappings()
    )
