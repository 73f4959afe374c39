"""The work queue: deliveries and jobs claimed with leases, results applied by the lease owner.

The queue is the database itself (reference/architecture.md §1.3): a `delivery` row is the work
item, a `job` row the coarse work (fan-out, callbacks). A claim moves rows to `sending` /
`running` under a lease naming the worker; only that worker can apply their results, and a
lease that runs out (the worker died) is swept back to `pending` and marked ambiguous, since the
provider may have the message. Every statement here is one of the few the design names; each
works on SQLite (one writer, `BEGIN IMMEDIATE`) and PostgreSQL (`FOR UPDATE SKIP LOCKED`).

Time always comes in as `now`: the caller's clock, which tests control.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    ColumnElement,
    Connection,
    DateTime,
    Integer,
    Select,
    String,
    Text,
    and_,
    bindparam,
    exists,
    literal_column,
    not_,
    select,
    text,
    update,
)

from clarion.credential_types import CHANNEL_CREDENTIAL_TYPES
from clarion.store import callbacks, deliveries, failover
from clarion.store.dialect import among, sqlite_time
from clarion.store.tables import (
    binding,
    credential,
    delivery,
    job,
    notification,
    service,
)

# Statuses with work left; the same lists as the partial indexes ix_delivery_open and
# ix_notification_open, so the queries below can use them.
OPEN_DELIVERY = ("pending", "sending")
OPEN_NOTIFICATION = ("queued", "fanning_out", "dispatched")
OPEN_JOB = ("pending", "running")

# The service columns that can name the credential of a channel, in order of preference. GCM
# bindings fall back to the service's FCM credential (Google retired GCM for FCM; CHANNEL_
# CREDENTIAL_TYPES lets them use one), and FCM bindings to an FCM credential set as Gcm.
SERVICE_CREDENTIALS: dict[str, tuple[str, ...]] = {
    "apn": ("apn_credential_id",),
    "gcm": ("gcm_credential_id", "fcm_credential_id"),
    "fcm": ("fcm_credential_id", "gcm_credential_id"),
    "sms": ("sms_credential_id",),
    "facebook-messenger": ("facebook_messenger_credential_id",),
    "webpush": ("webpush_credential_id",),
    "email": ("email_credential_id",),
}


def _status(column: ColumnElement[str], *values: str) -> ColumnElement[bool]:
    """`column IN ('a', …)` with the values written into the SQL rather than bound.

    The queue's partial indexes (ix_delivery_pending, ix_delivery_open, …) are declared on such
    literal conditions; SQLite only uses one for a query that spells its condition out, and
    PostgreSQL's cached generic plans cannot prove a bound parameter matches it either.
    """
    literals = [literal_column(f"'{value}'", String) for value in values]
    return column == literals[0] if len(literals) == 1 else column.in_(literals)


class LeaseLostError(Exception):
    """The work is no longer this worker's: its lease ran out and was swept or re-claimed."""


# ---------------------------------------------------------------------------------------------
# Deliveries


# Not frozen: one is made per delivery, and a frozen dataclass's __init__ costs ~3x.
@dataclass(slots=True, kw_only=True)
class ClaimedDelivery:
    id: int
    notification_id: int
    binding_id: int | None
    channel: str
    address: str
    # Including the one this claim starts.
    attempts: int
    # A previous lease ran out mid-send: the provider may already have this message.
    ambiguous: bool
    # The binding's own credential, else the service's for the channel; None when neither is set.
    credential_id: int | None
    # It already owns a send slot of its credential's rate limit (clarion.store.send_slots).
    slot_reserved: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class NotificationWork:
    """What every delivery of one notification shares: built into a payload once per channel."""

    id: int
    sid: str
    content: dict[str, Any]
    priority: str
    ttl: int
    expires_at: datetime


@dataclass(frozen=True, kw_only=True)
class DeliveryBatch:
    deliveries: list[ClaimedDelivery]
    notifications: dict[int, NotificationWork]


def _claimable(now: datetime, limit: int) -> Select[tuple[int]]:
    # Highest priority first, then oldest; served by the partial index ix_delivery_pending.
    return (
        select(delivery.c.id)
        .where(_status(delivery.c.status, "pending"), delivery.c.next_attempt_at <= now)
        .order_by(delivery.c.priority, delivery.c.next_attempt_at)
        .limit(limit)
    )


def claim_deliveries(
    conn: Connection, *, owner: str, now: datetime, lease: timedelta, limit: int
) -> DeliveryBatch:
    """Lease up to `limit` due deliveries to `owner`, with what sending them needs.

    PostgreSQL: `UPDATE … FROM (SELECT … FOR UPDATE SKIP LOCKED)`, so concurrent claimers each
    take different rows without waiting for each other. SQLite: `UPDATE … WHERE id IN (SELECT …
    LIMIT)`, safe because SQLite has one writer.
    """
    values = {
        "status": "sending",
        "lease_owner": owner,
        "lease_expires_at": now + lease,
        "attempts": delivery.c.attempts + 1,
        "date_updated": now,
    }
    if conn.dialect.name == "postgresql":
        picked = _claimable(now, limit).with_for_update(skip_locked=True).subquery("picked")
        claim = update(delivery).where(delivery.c.id == picked.c.id)
    else:
        claim = update(delivery).where(delivery.c.id.in_(_claimable(now, limit).scalar_subquery()))
    rows = conn.execute(
        claim.values(**values).returning(
            delivery.c.id,
            delivery.c.notification_id,
            delivery.c.binding_id,
            delivery.c.channel,
            delivery.c.address,
            delivery.c.attempts,
            delivery.c.ambiguous,
            delivery.c.credential_id,
            delivery.c.slot_reserved,
        )
    ).all()
    if not rows:
        return DeliveryBatch(deliveries=[], notifications={})
    works, service_credentials = _notifications(conn, {nid for _, nid, *_ in rows})
    # Rows unpacked as tuples: SQLAlchemy's per-attribute access cost ~7 µs a delivery.
    claimed = [
        ClaimedDelivery(
            id=id_,
            notification_id=notification_id,
            binding_id=binding_id,
            channel=channel,
            address=address,
            attempts=attempts,
            ambiguous=bool(ambiguous),
            credential_id=credential_id or service_credentials[notification_id].get(channel),
            slot_reserved=bool(slot_reserved),
        )
        for (
            id_,
            notification_id,
            binding_id,
            channel,
            address,
            attempts,
            ambiguous,
            credential_id,
            slot_reserved,
        ) in rows
    ]
    return DeliveryBatch(deliveries=claimed, notifications=works)


def _notifications(
    conn: Connection, ids: Collection[int]
) -> tuple[dict[int, NotificationWork], dict[int, dict[str, int]]]:
    """The claimed deliveries' notifications, and the credential their service gives each channel.

    Read per batch rather than cached: a batch usually spans one notification, and a service's
    credentials may change while its notifications are being sent.
    """
    columns = sorted({column for names in SERVICE_CREDENTIALS.values() for column in names})
    rows = conn.execute(
        select(
            notification.c.id,
            notification.c.sid,
            notification.c.content,
            notification.c.priority,
            notification.c.ttl,
            notification.c.expires_at,
            *(service.c[column] for column in columns),
        )
        .select_from(notification.join(service))
        .where(notification.c.id.in_(ids))
    ).all()
    credential_ids = {row._mapping[c] for row in rows for c in columns} - {None}
    types = dict(
        conn.execute(
            select(credential.c.id, credential.c.type).where(credential.c.id.in_(credential_ids))
        ).all()
    )
    works: dict[int, NotificationWork] = {}
    by_channel: dict[int, dict[str, int]] = {}
    for row in rows:
        works[row.id] = NotificationWork(
            id=row.id,
            sid=row.sid,
            content=row.content,
            priority=row.priority,
            ttl=row.ttl,
            expires_at=row.expires_at,
        )
        by_channel[row.id] = {}
        for channel, names in SERVICE_CREDENTIALS.items():
            for name in names:
                candidate = row._mapping[name]
                if types.get(candidate) in CHANNEL_CREDENTIAL_TYPES[channel]:
                    by_channel[row.id][channel] = candidate
                    break
    return works, by_channel


# Not frozen: one is made per delivery, and a frozen dataclass's __init__ costs ~3x.
@dataclass(slots=True, kw_only=True)
class Completion:
    """The outcome of one claimed delivery, decided by the dispatcher, applied here."""

    delivery_id: int
    notification_id: int
    # sent | failed | expired, or pending again (a retry at `next_attempt_at`).
    status: str
    event: str
    next_attempt_at: datetime | None = None
    provider_ref: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    # The provider said the address is dead: this binding is retired in the same transaction.
    retire_binding_id: int | None = None
    # Never sent (e.g. held back by an open circuit breaker): the claim's attempt is given back.
    refund_attempt: bool = False
    # Pending until a send slot it has reserved (`next_attempt_at`): it takes no other one.
    slot_reserved: bool = False


# SQLite: one writer, so the owner check cannot go stale before the per-row updates. Rows go
# to sqlite3's executemany as tuples: SQLAlchemy's per-row parameter processing cost more than
# the statement itself (profiled at 100,000 deliveries).
_APPLY_ROWS = """
    UPDATE delivery
       SET status = ?, attempts = attempts - ?, next_attempt_at = ?, slot_reserved = ?,
           provider_ref = ?, error_code = ?, error_message = ?, date_updated = ?,
           date_sent = coalesce(?, date_sent), lease_owner = NULL, lease_expires_at = NULL
     WHERE id = ?
"""
_RECORD_ROWS = "INSERT INTO delivery_event (delivery_id, at, kind, detail) VALUES (?, ?, ?, ?)"

# PostgreSQL: the whole batch in one statement fed by arrays (one round trip, one plan instead
# of one per row), the owner check included; RETURNING says which rows were still ours.
_APPLY_ARRAYS = text(
    """
    UPDATE delivery AS d
       SET status = r.status,
           attempts = d.attempts - r.refund,
           next_attempt_at = r.next_attempt_at,
           slot_reserved = r.slot_reserved,
           provider_ref = r.provider_ref,
           error_code = r.error_code,
           error_message = r.error_message,
           lease_owner = NULL,
           lease_expires_at = NULL,
           date_updated = :now,
           date_sent = CASE WHEN r.status = 'sent' THEN :now ELSE d.date_sent END
      FROM unnest(:ids, :statuses, :refunds, :nexts, :slots, :refs, :codes, :messages)
           AS r (id, status, refund, next_attempt_at, slot_reserved, provider_ref, error_code,
                 error_message)
     WHERE d.id = r.id AND d.lease_owner = :owner AND d.status = 'sending'
    RETURNING d.id
    """
).bindparams(
    bindparam("ids", type_=ARRAY(BigInteger)),
    bindparam("statuses", type_=ARRAY(String)),
    bindparam("refunds", type_=ARRAY(Integer)),
    bindparam("nexts", type_=ARRAY(DateTime)),
    bindparam("slots", type_=ARRAY(Boolean)),
    bindparam("refs", type_=ARRAY(String)),
    bindparam("codes", type_=ARRAY(String)),
    bindparam("messages", type_=ARRAY(Text)),
    bindparam("now", type_=DateTime),
    bindparam("owner", type_=String),
)

_RECORD_ARRAYS = text(
    """
    INSERT INTO delivery_event (delivery_id, at, kind, detail)
    SELECT e.delivery_id, :now, e.kind, CAST(e.detail AS JSON)
      FROM unnest(:ids, :kinds, :details) AS e (delivery_id, kind, detail)
    """
).bindparams(
    bindparam("ids", type_=ARRAY(BigInteger)),
    bindparam("kinds", type_=ARRAY(String)),
    bindparam("details", type_=ARRAY(Text)),
    bindparam("now", type_=DateTime),
)


def complete_deliveries(
    conn: Connection, *, owner: str, now: datetime, completions: Sequence[Completion]
) -> set[int]:
    """Apply a batch of results in one transaction; returns the ids that were still `owner`'s.

    A result for a delivery whose lease was lost is dropped: the delivery was swept (and maybe
    re-claimed), so its new owner decides it. On PostgreSQL the update itself checks and locks;
    the sweeper skips locked rows, so it never waits on, or slips in before, a completion.

    Whether that finished a notification is `complete_notifications`' question, asked in a
    transaction after this one commits: two workers storing a notification's last results at
    the same moment each see the other's rows still open, but whichever asks last sees both.
    """
    if not completions:
        return set()
    if conn.dialect.name == "postgresql":
        owned = set(
            conn.scalars(
                _APPLY_ARRAYS,
                {
                    "ids": [c.delivery_id for c in completions],
                    "statuses": [c.status for c in completions],
                    "refunds": [int(c.refund_attempt) for c in completions],
                    "nexts": [c.next_attempt_at or now for c in completions],
                    "slots": [c.slot_reserved for c in completions],
                    "refs": [c.provider_ref for c in completions],
                    "codes": [c.error_code for c in completions],
                    "messages": [c.error_message for c in completions],
                    "now": now,
                    "owner": owner,
                },
            )
        )
        applied = [c for c in completions if c.delivery_id in owned]
    else:
        owned = set(
            conn.scalars(
                select(delivery.c.id).where(
                    among(conn, delivery.c.id, [c.delivery_id for c in completions]),
                    delivery.c.lease_owner == owner,
                    delivery.c.status == "sending",
                )
            )
        )
        applied = [c for c in completions if c.delivery_id in owned]
        if applied:
            at = sqlite_time(now)
            conn.exec_driver_sql(
                _APPLY_ROWS,
                [
                    (
                        c.status,
                        int(c.refund_attempt),
                        at if c.next_attempt_at is None else sqlite_time(c.next_attempt_at),
                        int(c.slot_reserved),
                        c.provider_ref,
                        c.error_code,
                        c.error_message,
                        at,
                        at if c.status == "sent" else None,
                        c.delivery_id,
                    )
                    for c in applied
                ],
            )
    # A send's own history is the row's: `date_sent`, `attempts`, `provider_ref`, `ambiguous`
    # (deliveries.history shows it as a `sent` event); everything else is an event.
    _record(conn, now, [(c.delivery_id, c.event, _detail(c)) for c in applied if c.event != "sent"])
    deliveries.deliver_receipted_early(
        conn, sent_ids=[c.delivery_id for c in applied if c.status == "sent"]
    )
    retired = {c.retire_binding_id: c for c in applied if c.retire_binding_id is not None}
    if retired:
        _retire_bindings(conn, now=now, retired=retired)
    # Failover moves on at once from a group whose deliveries have now all failed.
    failover.after_failures(
        conn, now=now, delivery_ids=[c.delivery_id for c in applied if c.status in failover.ENDED]
    )
    return owned


def _detail(c: Completion) -> dict[str, Any]:
    detail = dict(c.detail)
    for key, value in (
        ("provider_ref", c.provider_ref),
        ("error_code", c.error_code),
        ("error_message", c.error_message),
        ("next_attempt_at", c.next_attempt_at.isoformat() if c.next_attempt_at else None),
    ):
        if value is not None:
            detail[key] = value
    return detail


def _record(
    conn: Connection, now: datetime, events: Sequence[tuple[int, str, dict[str, Any] | None]]
) -> None:
    """Append (delivery id, kind, detail) events to the deliveries' histories."""
    if not events:
        return
    if conn.dialect.name == "postgresql":
        conn.execute(
            _RECORD_ARRAYS,
            {
                "ids": [delivery_id for delivery_id, _, _ in events],
                "kinds": [kind for _, kind, _ in events],
                "details": [json.dumps(detail) if detail else None for _, _, detail in events],
                "now": now,
            },
        )
        return
    at = sqlite_time(now)
    conn.exec_driver_sql(
        _RECORD_ROWS,
        [
            (delivery_id, at, kind, json.dumps(detail) if detail else None)
            for delivery_id, kind, detail in events
        ],
    )


def _retire_bindings(conn: Connection, *, now: datetime, retired: Mapping[int, Completion]) -> None:
    """Mark bindings inactive with the provider's reason; their other queued deliveries fail.

    One UPDATE of bindings and one of their queued deliveries per provider answer in the batch
    (in practice one: a batch's dead tokens all say `Unregistered`), not per binding: a fan-out
    to many dead tokens retires hundreds of bindings per batch, and on PostgreSQL each statement
    is a round trip. Deliveries of the binding already being sent elsewhere keep their own result.
    """
    by_answer: dict[tuple[str | None, str], list[int]] = {}
    for binding_id, c in sorted(retired.items()):
        by_answer.setdefault((c.error_code, _reason(c)), []).append(binding_id)
    # (delivery id, notification id) of the deliveries failed for want of their binding.
    orphans: list[tuple[int, int]] = []
    for (error_code, reason), binding_ids in by_answer.items():
        conn.execute(
            update(binding)
            .where(binding.c.id.in_(binding_ids), binding.c.inactive_since.is_(None))
            .values(inactive_since=now, inactive_reason=reason[:256], date_updated=now)
        )
        orphans += conn.execute(
            update(delivery)
            .where(delivery.c.binding_id.in_(binding_ids), delivery.c.status == "pending")
            .values(
                status="failed",
                error_code=error_code,
                error_message=f"binding retired: {reason}",
                date_updated=now,
            )
            .returning(delivery.c.id, delivery.c.notification_id)
        ).all()
    _record(conn, now, [(delivery_id, "binding_retired", None) for delivery_id, _ in orphans])
    failover.after_failures(conn, now=now, delivery_ids=[delivery_id for delivery_id, _ in orphans])
    complete_notifications(conn, now=now, ids={notification_id for _, notification_id in orphans})


def _reason(c: Completion) -> str:
    return ": ".join(part for part in (c.error_code, c.error_message) if part) or "dead address"


def release_deliveries(
    conn: Connection, *, owner: str, now: datetime, ids: Collection[int], maybe_sent: bool
) -> int:
    """Give leased deliveries back without a result (graceful stop).

    Never sent: the claim's attempt is taken back. Interrupted mid-send (`maybe_sent`): the
    attempt counts and the delivery is ambiguous, exactly as if its lease had run out.
    """
    if not ids:
        return 0
    values: dict[str, Any] = {
        "status": "pending",
        "lease_owner": None,
        "lease_expires_at": None,
        "date_updated": now,
    }
    if maybe_sent:
        values["ambiguous"] = True
    else:
        values["attempts"] = delivery.c.attempts - 1
    released = conn.scalars(
        update(delivery)
        .where(
            delivery.c.id.in_(ids), delivery.c.lease_owner == owner, delivery.c.status == "sending"
        )
        .values(**values)
        .returning(delivery.c.id)
    ).all()
    kind = "interrupted" if maybe_sent else "released"
    _record(conn, now, [(delivery_id, kind, None) for delivery_id in released])
    return len(released)


@dataclass(frozen=True, kw_only=True)
class Swept:
    deliveries: int
    jobs: int


def sweep_expired_leases(conn: Connection, *, now: datetime) -> Swept:
    """Return work whose lease ran out (its worker died or stalled) to the queue.

    A delivery comes back ambiguous: it may have reached the provider before the worker died.
    Rows a live worker is completing right now are locked, and skipped until the next sweep.
    """
    expired = (
        select(delivery.c.id)
        .where(_status(delivery.c.status, "sending"), delivery.c.lease_expires_at < now)
        .with_for_update(skip_locked=True)
    )
    swept = conn.scalars(
        update(delivery)
        .where(delivery.c.id.in_(expired.scalar_subquery()))
        .values(
            status="pending",
            ambiguous=True,
            lease_owner=None,
            lease_expires_at=None,
            date_updated=now,
        )
        .returning(delivery.c.id)
    ).all()
    _record(conn, now, [(delivery_id, "lease_expired", None) for delivery_id in swept])
    jobs = conn.execute(
        update(job)
        .where(_status(job.c.status, "running"), job.c.lease_expires_at < now)
        .values(status="pending", lease_owner=None, lease_expires_at=None)
    ).rowcount
    return Swept(deliveries=len(swept), jobs=jobs)


def expire_overdue(conn: Connection, *, now: datetime, limit: int = 5000) -> int:
    """Expire up to `limit` queued deliveries whose notification's TTL has passed; never sent.

    TTL 0 means "try once now": such a delivery is attempted once when claimed, and the
    dispatcher expires it afterwards instead.
    """
    overdue = (
        select(delivery.c.id)
        .where(
            delivery.c.status == "pending",
            delivery.c.notification_id.in_(
                select(notification.c.id).where(
                    _status(notification.c.status, *OPEN_NOTIFICATION),
                    notification.c.expires_at <= now,
                    notification.c.ttl > 0,
                )
            ),
        )
        .limit(limit)
    )
    rows = conn.execute(
        update(delivery)
        .where(delivery.c.id.in_(overdue.scalar_subquery()))
        .values(
            status="expired",
            lease_owner=None,
            lease_expires_at=None,
            date_updated=now,
        )
        .returning(delivery.c.id, delivery.c.notification_id)
    ).all()
    _record(conn, now, [(row.id, "expired", None) for row in rows])
    complete_notifications(conn, now=now, ids={row.notification_id for row in rows})
    return len(rows)


def complete_notifications(
    conn: Connection, *, now: datetime, ids: Collection[int] | None = None
) -> list[int]:
    """Mark `completed` the notifications (all open ones by default) with no work left.

    No work left: no fan-out job still to run, no delivery pending or being sent, no failover
    chain waiting (clarion.store.failover). A direct (ToBinding) notification stays `queued`
    until then, since its deliveries exist from the start.
    """
    if ids is not None and not ids:
        return []
    open_job = exists().where(
        job.c.notification_id == notification.c.id, _status(job.c.status, *OPEN_JOB)
    )
    open_delivery = exists().where(
        delivery.c.notification_id == notification.c.id,
        _status(delivery.c.status, *OPEN_DELIVERY),
    )
    condition = and_(
        _status(notification.c.status, *OPEN_NOTIFICATION),
        not_(open_job),
        not_(open_delivery),
        # A failover chain still waiting for a confirmation may yet send on its next group.
        not_(failover.waiting(notification.c.id)),
    )
    if ids is not None:
        condition = and_(condition, notification.c.id.in_(ids))
    completed = list(
        conn.scalars(
            update(notification)
            .where(condition)
            .values(status="completed", date_completed=now)
            .returning(notification.c.id)
        )
    )
    # In the same transaction: a completed notification always has its callback queued.
    callbacks.enqueue(conn, now=now, notification_ids=completed)
    return completed


# ---------------------------------------------------------------------------------------------
# Jobs


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimedJob:
    id: int
    kind: str
    notification_id: int | None
    cursor: dict[str, Any] | None
    attempts: int
    max_attempts: int


def claim_jobs(
    conn: Connection,
    *,
    owner: str,
    now: datetime,
    lease: timedelta,
    limit: int,
    kinds: Collection[str],
) -> list[ClaimedJob]:
    """Lease up to `limit` due jobs of `kinds` (those this worker can run), oldest first."""
    pick = (
        select(job.c.id)
        .where(_status(job.c.status, "pending"), job.c.run_at <= now, job.c.kind.in_(kinds))
        .order_by(job.c.run_at)
        .limit(limit)
    )
    values = {
        "status": "running",
        "lease_owner": owner,
        "lease_expires_at": now + lease,
        "attempts": job.c.attempts + 1,
    }
    if conn.dialect.name == "postgresql":
        picked = pick.with_for_update(skip_locked=True).subquery("picked")
        claim = update(job).where(job.c.id == picked.c.id)
    else:
        claim = update(job).where(job.c.id.in_(pick.scalar_subquery()))
    rows = conn.execute(
        claim.values(**values).returning(
            job.c.id,
            job.c.kind,
            job.c.notification_id,
            job.c.cursor,
            job.c.attempts,
            job.c.max_attempts,
        )
    ).all()
    return [
        ClaimedJob(
            id=row.id,
            kind=row.kind,
            notification_id=row.notification_id,
            cursor=row.cursor,
            attempts=row.attempts,
            max_attempts=row.max_attempts,
        )
        for row in rows
    ]


def lock_job(conn: Connection, *, job_id: int, owner: str) -> dict[str, Any] | None:
    """The job's cursor, with its row locked, if `owner` still holds it; else LeaseLostError."""
    row = conn.execute(
        select(job.c.cursor)
        .where(job.c.id == job_id, job.c.lease_owner == owner, job.c.status == "running")
        .with_for_update()
    ).first()
    if row is None:
        raise LeaseLostError(f"job {job_id}")
    return row.cursor  # type: ignore[no-any-return]


def finish_job(conn: Connection, *, job_id: int, owner: str) -> None:
    _own_job(conn, job_id=job_id, owner=owner, values={"status": "done"})


def fail_job(
    conn: Connection, *, job_id: int, owner: str, error: str, retry_at: datetime | None
) -> None:
    """Record a failed run: to be run again at `retry_at`, or for good when that is None."""
    values: dict[str, Any] = {"last_error": error[:4000]}
    if retry_at is None:
        values["status"] = "failed"
    else:
        values.update(status="pending", run_at=retry_at)
    _own_job(conn, job_id=job_id, owner=owner, values=values)


def release_job(conn: Connection, *, job_id: int, owner: str) -> None:
    """Give a job back unfinished (graceful stop); it resumes from its cursor elsewhere."""
    _own_job(
        conn,
        job_id=job_id,
        owner=owner,
        values={"status": "pending", "attempts": job.c.attempts - 1},
    )


def _own_job(conn: Connection, *, job_id: int, owner: str, values: dict[str, Any]) -> None:
    result = conn.execute(
        update(job)
        .where(job.c.id == job_id, job.c.lease_owner == owner, job.c.status == "running")
        .values(lease_owner=None, lease_expires_at=None, **values)
    )
    if result.rowcount == 0:
        raise LeaseLostError(f"job {job_id}")


# ---------------------------------------------------------------------------------------------
# Credentials, as the channels need them


@dataclass(frozen=True, slots=True, kw_only=True)
class SealedCredential:
    id: int
    sid: str
    type: str
    sandbox: bool | None
    settings: dict[str, Any]
    secret_sealed: str | None
    date_updated: datetime


def load_credentials(conn: Connection, ids: Collection[int]) -> dict[int, SealedCredential]:
    rows = conn.execute(
        select(
            credential.c.id,
            credential.c.sid,
            credential.c.type,
            credential.c.sandbox,
            credential.c.settings,
            credential.c.secret_sealed,
            credential.c.date_updated,
        ).where(credential.c.id.in_(ids))
    ).all()
    return {
        row.id: SealedCredential(
            id=row.id,
            sid=row.sid,
            type=row.type,
            sandbox=row.sandbox,
            settings=row.settings,
            secret_sealed=row.secret_sealed,
            date_updated=row.date_updated,
        )
        for row in rows
    }


def credential_versions(conn: Connection, ids: Collection[int]) -> dict[int, datetime]:
    """When each credential last changed, to rebuild channels whose secrets were rotated."""
    return dict(
        conn.execute(
            select(credential.c.id, credential.c.date_updated).where(credential.c.id.in_(ids))
        ).all()
    )
