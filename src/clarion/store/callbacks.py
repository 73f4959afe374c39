"""Delivery callbacks' SQL: the `delivery_callback` job a finished notification queues, the
deliveries each of its batches reports, its progress, and its state as the API shows it.

A notification's callback URL is its own DeliveryCallbackUrl, else its service's when the service
has DeliveryCallbackEnabled (reference/twilio-notify.md §4.1, §6). It is decided once, when the
notification completes, and kept in the job's cursor with where the job has got to:
`{"url", "sequence": the next batch's SequenceId, "after": the last delivery id reported}`.
Batches walk the deliveries in id order, so a job resumed after a crash goes on with the first
batch its receiver had not acknowledged.

Every POST's answer is kept for the debugger (`delivery_callback_attempt`): only the last
`KEPT_ATTEMPTS` of each batch, so a receiver that fails for hours costs a few rows, not one per
try.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, case, delete, func, insert, select, update

from clarion.store.dialect import insert_or_ignore
from clarion.store.tables import (
    account,
    binding,
    delivery,
    delivery_callback_attempt,
    job,
    notification,
    service,
)

KIND = "delivery_callback"
# Deliveries per callback at most: Notify's "up to 1000" (reference/twilio-notify.md §6) less
# the six other form fields, so that a callback (one DeliveryState field per delivery) stays
# within the 1000 fields web frameworks accept by default: Django's
# DATA_UPLOAD_MAX_NUMBER_FIELDS and aiohttp's client_max_fields refuse more (400, 413), PHP's
# max_input_vars silently drops the rest.
BATCH_SIZE = 1000 - 6
# The delivery states a callback reports: every one a completed notification can have.
FINAL_DELIVERY = ("sent", "delivered", "failed", "expired")
# Tries at one batch before the callback fails for good: a delivery's budget
# (clarion.delivery.retry.MAX_ATTEMPTS), so a receiver gets about 25 minutes to come back.
MAX_ATTEMPTS = 12
# The job's status → the callback's, as the API shows it.
API_STATUS = {"pending": "pending", "running": "pending", "done": "sent", "failed": "failed"}
# Attempts kept per batch: the latest, which say how the receiver answers now; a batch has at
# most MAX_ATTEMPTS tries, and the first of a long failure adds little to the last few.
KEPT_ATTEMPTS = 5


def _url() -> ColumnElement[str | None]:
    """The callback URL of a notification joined with its service, or NULL for none."""
    return func.coalesce(
        notification.c.delivery_callback_url,
        case((service.c.delivery_callback_enabled, service.c.delivery_callback_url)),
    )


def dedupe_key(notification_id: int) -> str:
    return f"{KIND}:{notification_id}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Cursor:
    url: str
    sequence: int = 0
    after: int = 0

    @classmethod
    def of(cls, cursor: dict[str, Any]) -> Cursor:
        return cls(url=cursor["url"], sequence=cursor["sequence"], after=cursor["after"])

    def as_json(self) -> dict[str, Any]:
        return {"url": self.url, "sequence": self.sequence, "after": self.after}


def enqueue(conn: Connection, *, now: datetime, notification_ids: Collection[int]) -> None:
    """Queue the callback of each just-completed notification that has a URL.

    Called in the transaction that completes them; the unique dedupe key makes a second call
    for the same notification a no-op.
    """
    if not notification_ids:
        return
    url = _url()
    rows = conn.execute(
        select(notification.c.id, url.label("url"))
        .select_from(notification.join(service))
        .where(notification.c.id.in_(notification_ids), url.is_not(None))
    ).all()
    if not rows:
        return
    conn.execute(
        insert_or_ignore(conn, job),
        [
            {
                "kind": KIND,
                "notification_id": row.id,
                "cursor": Cursor(url=row.url).as_json(),
                "status": "pending",
                "run_at": now,
                "max_attempts": MAX_ATTEMPTS,
                "dedupe_key": dedupe_key(row.id),
            }
            for row in rows
        ],
    )


@dataclass(frozen=True, kw_only=True)
class Sender:
    """Whose callback it is: the SIDs every batch carries and the token that signs it."""

    notification_sid: str
    service_sid: str
    account_sid: str
    auth_token_sealed: str


def sender(conn: Connection, *, notification_id: int) -> Sender:
    row = conn.execute(
        select(
            notification.c.sid.label("notification_sid"),
            service.c.sid.label("service_sid"),
            account.c.sid.label("account_sid"),
            account.c.auth_token_sealed,
        )
        .select_from(notification.join(service).join(account))
        .where(notification.c.id == notification_id)
    ).one()
    return Sender(
        notification_sid=row.notification_sid,
        service_sid=row.service_sid,
        account_sid=row.account_sid,
        auth_token_sealed=row.auth_token_sealed,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Reported:
    """One delivery as a callback reports it."""

    id: int
    provider_ref: str | None
    address: str
    channel: str
    status: str
    error_code: str | None
    error_message: str | None
    binding_sid: str | None
    identity: str | None
    # Its place in a failover chain (clarion.store.failover); all None outside one.
    failover_of: int | None
    failover_step: int | None
    failover_reason: str | None


@dataclass(frozen=True, kw_only=True)
class Batch:
    deliveries: list[Reported]
    # Nothing is left after these: the receiver gets IsFinal=true.
    final: bool


def load_batch(
    conn: Connection, *, notification_id: int, after: int, size: int = BATCH_SIZE
) -> Batch:
    """The next `size` final deliveries after delivery id `after`, and whether any remain."""
    rows = conn.execute(
        select(
            delivery.c.id,
            delivery.c.provider_ref,
            delivery.c.address,
            delivery.c.channel,
            delivery.c.status,
            delivery.c.error_code,
            delivery.c.error_message,
            binding.c.sid.label("binding_sid"),
            delivery.c.identity,
            delivery.c.failover_of,
            delivery.c.failover_step,
            delivery.c.failover_reason,
        )
        .select_from(delivery.outerjoin(binding, binding.c.id == delivery.c.binding_id))
        .where(
            delivery.c.notification_id == notification_id,
            delivery.c.id > after,
            delivery.c.status.in_(FINAL_DELIVERY),
        )
        .order_by(delivery.c.id)
        # One more than a batch says whether another batch follows.
        .limit(size + 1)
    ).all()
    return Batch(
        deliveries=[Reported(**row._mapping) for row in rows[:size]], final=len(rows) <= size
    )


def record_batch(
    conn: Connection,
    *,
    job_id: int,
    owner: str,
    cursor: Cursor,
    final: bool,
    now: datetime,
    lease: timedelta,
) -> bool:
    """A batch was acknowledged: move the cursor past it; False if `owner` lost the job.

    After the last batch the job is done. Otherwise its lease is renewed, and the run under way
    counts as the first try at the next batch, so `attempts` (and the limit) are per batch.
    """
    values: dict[str, Any] = {"cursor": cursor.as_json(), "last_error": None}
    if final:
        values |= {"status": "done", "lease_owner": None, "lease_expires_at": None}
    else:
        values |= {"attempts": 1, "lease_expires_at": now + lease}
    result = conn.execute(
        update(job)
        .where(job.c.id == job_id, job.c.lease_owner == owner, job.c.status == "running")
        .values(**values)
    )
    return result.rowcount == 1


@dataclass(frozen=True, kw_only=True)
class State:
    """A notification's callback, as GET …/Notifications/{NT} shows it."""

    url: str | None
    # pending (queued or being retried) | sent | failed; None while nothing is queued: the
    # notification has no callback URL, or has not completed yet.
    status: str | None
    # Tries at the batch the callback is at (the last one, once sent).
    attempts: int
    # Why the last try failed; cleared when that batch is acknowledged.
    last_error: str | None
    batches_sent: int


def state(conn: Connection, *, notification_id: int) -> State:
    row = conn.execute(
        select(job.c.status, job.c.cursor, job.c.attempts, job.c.last_error).where(
            job.c.dedupe_key == dedupe_key(notification_id)
        )
    ).first()
    if row is None:
        url = conn.scalar(
            select(_url())
            .select_from(notification.join(service))
            .where(notification.c.id == notification_id)
        )
        return State(url=url, status=None, attempts=0, last_error=None, batches_sent=0)
    cursor = Cursor.of(row.cursor)
    return State(
        url=cursor.url,
        status=API_STATUS[row.status],
        attempts=row.attempts,
        last_error=row.last_error,
        batches_sent=cursor.sequence,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Attempt:
    """One POST of one batch and what came back."""

    sequence: int
    final: bool
    deliveries: int
    # Which try at this batch, from 1.
    attempt: int
    at: datetime
    # The receiver's HTTP status; None when there was no answer (then `error` says why).
    status_code: int | None
    error: str | None
    latency_ms: int
    # The start of the response body, as sanitised text (clarion.delivery.callbacks).
    response_excerpt: str | None

    @property
    def acknowledged(self) -> bool:
        return self.status_code is not None and acknowledges(self.status_code)


def acknowledges(status: int) -> bool:
    """A receiver acknowledges a batch with any 2xx (reference/twilio-notify.md §6)."""
    return 200 <= status < 300


def record_attempt(conn: Connection, *, notification_id: int, attempt: Attempt) -> None:
    """Keep one POST's answer, and forget the batch's attempts older than the last few."""
    conn.execute(
        insert(delivery_callback_attempt).values(
            notification_id=notification_id,
            sequence=attempt.sequence,
            final=attempt.final,
            deliveries=attempt.deliveries,
            attempt=attempt.attempt,
            at=attempt.at,
            status_code=attempt.status_code,
            error=attempt.error,
            latency_ms=attempt.latency_ms,
            response_excerpt=attempt.response_excerpt,
        )
    )
    # The batch's attempts beyond the kept ones, newest first, on the (notification, sequence,
    # id) index: at most one row per call once a batch has its KEPT_ATTEMPTS.
    stale = (
        select(delivery_callback_attempt.c.id)
        .where(
            delivery_callback_attempt.c.notification_id == notification_id,
            delivery_callback_attempt.c.sequence == attempt.sequence,
        )
        .order_by(delivery_callback_attempt.c.id.desc())
        .offset(KEPT_ATTEMPTS)
    )
    ids = conn.scalars(stale).all()
    if ids:
        conn.execute(
            delete(delivery_callback_attempt).where(delivery_callback_attempt.c.id.in_(ids))
        )


@dataclass(frozen=True, kw_only=True)
class Attempts:
    """A notification's latest callback attempts, newest first, and how many are kept."""

    latest: list[Attempt]
    total: int


def attempts(conn: Connection, *, notification_id: int, limit: int) -> Attempts:
    """The latest `limit` attempts of a notification's callback (all its batches)."""
    table = delivery_callback_attempt
    rows = conn.execute(
        select(
            table.c.sequence,
            table.c.final,
            table.c.deliveries,
            table.c.attempt,
            table.c.at,
            table.c.status_code,
            table.c.error,
            table.c.latency_ms,
            table.c.response_excerpt,
        )
        .where(table.c.notification_id == notification_id)
        .order_by(table.c.id.desc())
        .limit(limit)
    ).all()
    total = len(rows)
    if total == limit:
        total = (
            conn.scalar(
                select(func.count())
                .select_from(table)
                .where(table.c.notification_id == notification_id)
            )
            or 0
        )
    return Attempts(latest=[Attempt(**row._mapping) for row in rows], total=total)
