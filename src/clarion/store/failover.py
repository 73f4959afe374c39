"""Failover chains: per identity, one channel group after another until someone confirms.

A notification with a failover policy (clarion.failover_policy) is not fanned out binding by
binding: its fan-out creates one `failover_chain` per identity it reaches (an identity is reached
when any of its active bindings matches the targets) and sends on the chain's first group in
which the identity has an active binding, to *every* active binding of the identity in that
group, whether or not it matched the targets: failover is about the person, not the address.
Groups skipped for want of a binding are the chain's `no_binding` reason.

A chain moves on, in one transaction each time:

- at once, when every delivery of its current group has failed or expired (`dead_token` when
  one of them was a dead address, else `failed`), in the transaction storing the last failure;
- when its deadline (`wait` seconds after it reached its group) passes unconfirmed
  (`no_receipt`): the leader's timer poll, one indexed query for the earliest due chains;
- to the next group in which the identity still has an active binding, or to `exhausted` when
  none is left (the notification's outcome for that identity is then a failure).

Every move locks the chains it looks at and is guarded by the step it expects (`WHERE step =
:from AND status = 'waiting'`), so a group is never sent twice and nothing moves after a
confirmation, whoever races whom; a replayed insert is absorbed by the delivery's unique
(notification, channel, address). Moving on cancels nothing: a push still being retried when
the wait runs out may yet arrive, next to the SMS.

A confirmation (a receipt, an SMS `delivered` report) of a delivery of the chain's group or an
earlier one stops the chain (`confirmed`); what was already sent stays sent.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    DateTime,
    Integer,
    Select,
    String,
    and_,
    case,
    exists,
    func,
    literal,
    not_,
    or_,
    select,
    update,
)

from clarion.failover_policy import Policy, from_json
from clarion.store.dialect import insert_or_ignore
from clarion.store.notifications import PRIORITY_RANK
from clarion.store.tables import binding, delivery, failover_chain, notification, service

# Why a chain left a group.
NO_BINDING = "no_binding"
DEAD_TOKEN = "dead_token"  # noqa: S105 (a reason, not a credential)
FAILED = "failed"
NO_RECEIPT = "no_receipt"

# Delivery states that end a delivery without reaching anyone.
ENDED = ("failed", "expired")
# Delivery states in which the provider took the message: the identity was reached.
REACHED = ("sent", "delivered")
# Due chains moved per timer transaction.
TIMER_BATCH = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class _Notification:
    id: int
    service_id: int
    policy: Policy
    priority: int
    ttl: int
    expires_at: datetime
    date_created: datetime


def _notification(conn: Connection, notification_id: int) -> _Notification | None:
    """The notification's failover policy and what its new deliveries need; None without one."""
    row = conn.execute(
        select(
            notification.c.service_id,
            notification.c.failover,
            notification.c.priority,
            notification.c.ttl,
            notification.c.expires_at,
            notification.c.date_created,
        ).where(notification.c.id == notification_id)
    ).first()
    if row is None or row.failover is None:
        return None
    return _Notification(
        id=notification_id,
        service_id=row.service_id,
        policy=from_json(row.failover),
        priority=PRIORITY_RANK[row.priority],
        ttl=row.ttl,
        expires_at=row.expires_at,
        date_created=row.date_created,
    )


def service_default(conn: Connection, *, service_id: int) -> dict[str, Any] | None:
    """The service's failover policy, which its notifications get unless they say otherwise."""
    policy: dict[str, Any] | None = conn.scalar(
        select(service.c.failover).where(service.c.id == service_id)
    )
    return policy


# ---------------------------------------------------------------------------------------------
# Starting chains (fan-out)


def start(
    conn: Connection,
    *,
    notification_id: int,
    identities: Select[Any],
    now: datetime,
) -> int:
    """Start the chains of `identities` (a one-column query) and send on their first group.

    Idempotent: an identity whose chain exists already (an earlier chunk reached it, or this
    chunk is being written again after a crash) keeps it; only its current group's missing
    deliveries, if any, are written. Returns how many deliveries were written.
    """
    note = _notification(conn, notification_id)
    assert note is not None, "only a notification with a failover policy has chains"
    policy = note.policy
    # The chunk's identities as values: as a subquery, PostgreSQL without statistics joined the
    # service's bindings to themselves (quadratic in the service's size).
    names = list(conn.scalars(identities))
    if not names:
        return 0
    # Each identity's first group with an active binding: one pass over its bindings (an
    # aggregate, so the engine computes it once per identity however often it is used below).
    own = binding.alias("own")
    starts = (
        select(own.c.identity, func.min(_group_of(note, own.c.binding_type)).label("first"))
        .where(
            own.c.service_id == note.service_id,
            own.c.identity.in_(names),
            own.c.inactive_since.is_(None),
        )
        .group_by(own.c.identity)
        .subquery("starts")
    )
    waiting = starts.c.first < len(policy.channels)
    columns: dict[str, Any] = {
        "notification_id": literal(note.id, Integer),
        "identity": starts.c.identity,
        "step": starts.c.first,
        "status": case((waiting, literal("waiting", String)), else_=literal("exhausted", String)),
        "deadline": case((waiting, literal(now + timedelta(seconds=policy.wait), DateTime))),
        "reason": case((starts.c.first > 0, literal(NO_BINDING, String))),
        "date_created": literal(now, DateTime),
        "date_updated": literal(now, DateTime),
    }
    # The SELECT always has a WHERE, which SQLite needs to parse INSERT … SELECT … ON CONFLICT.
    conn.execute(
        insert_or_ignore(conn, failover_chain).from_select(
            list(columns), select(*columns.values()).where(starts.c.identity.is_not(None))
        )
    )
    return _send(conn, note=note, now=now, identities=names)


def _group_of(
    note: _Notification, binding_type: ColumnElement[str], *, after: int = -1
) -> ColumnElement[int]:
    """The index of the policy group after `after` that `binding_type` belongs to; the number
    of groups for a type in no such group."""
    count = len(note.policy.channels)
    later = range(after + 1, count)
    if not later:
        return literal(count, Integer)
    return case(
        *(
            (binding_type.in_(note.policy.binding_types(step)), literal(step, Integer))
            for step in later
        ),
        else_=literal(count, Integer),
    )


def _next_step(note: _Notification, *, after: int) -> ColumnElement[int]:
    """The first group after `after` in which the chain's identity has an active binding; the
    number of groups when there is none."""
    own = binding.alias("own")
    return (
        select(
            func.coalesce(
                func.min(_group_of(note, own.c.binding_type, after=after)),
                literal(len(note.policy.channels), Integer),
            )
        )
        .where(
            own.c.service_id == note.service_id,
            own.c.identity == failover_chain.c.identity,
            own.c.inactive_since.is_(None),
        )
        .scalar_subquery()
    )


def _send(
    conn: Connection,
    *,
    note: _Notification,
    now: datetime,
    identities: Collection[str],
) -> int:
    """Write the deliveries of the waiting chains of `identities` of `note`: every active
    binding of the identity in the chain's current group.

    Both sides of the join are limited to `identities`, so whichever the planner drives the join
    from, it reads only their rows (SQLite without statistics takes `service_id = ?` for a few
    rows, and would otherwise walk every binding of the service once per batch)."""
    policy = note.policy
    in_group = or_(
        *(
            and_(
                failover_chain.c.step == step,
                binding.c.binding_type.in_(policy.binding_types(step)),
            )
            for step in range(len(policy.channels))
        )
    )
    columns: dict[str, Any] = {
        "notification_id": literal(note.id, Integer),
        "binding_id": binding.c.id,
        "identity": binding.c.identity,
        "channel": binding.c.binding_type,
        "address": binding.c.address,
        "credential_id": binding.c.credential_id,
        "status": literal("pending", String),
        "priority": literal(note.priority, Integer),
        # Due as of the notification's creation, so a chain's next group is claimed ahead of
        # the notification's deliveries still queued, not behind them all.
        "next_attempt_at": literal(note.date_created, DateTime),
        "failover_of": failover_chain.c.failover_of,
        "failover_step": failover_chain.c.step,
        "failover_reason": failover_chain.c.reason,
        "date_created": literal(now, DateTime),
        "date_updated": literal(now, DateTime),
    }
    query = (
        select(*columns.values())
        .select_from(
            failover_chain.join(
                binding,
                and_(
                    binding.c.service_id == note.service_id,
                    binding.c.identity == failover_chain.c.identity,
                ),
            )
        )
        .where(
            failover_chain.c.notification_id == note.id,
            failover_chain.c.status == "waiting",
            failover_chain.c.identity.in_(identities),
            binding.c.identity.in_(identities),
            binding.c.inactive_since.is_(None),
            in_group,
        )
    )
    return int(
        conn.execute(insert_or_ignore(conn, delivery).from_select(list(columns), query)).rowcount
    )


# ---------------------------------------------------------------------------------------------
# Moving chains on


def _advance(
    conn: Connection,
    *,
    note: _Notification,
    step: int,
    chain_ids: Collection[int],
    reason: str,
    now: datetime,
) -> int:
    """Move those of `chain_ids` (chains of `note`, locked by the caller) that still wait at
    `step` on to their next group with an active binding, and send there.

    Returns how many chains moved (to a group, or to the end of the list).
    """
    count = len(note.policy.channels)
    expired = note.ttl > 0 and note.expires_at <= now
    # A delivery of the group being left, the same one for every delivery of the next group.
    previous = (
        select(func.min(delivery.c.id))
        .where(
            delivery.c.notification_id == failover_chain.c.notification_id,
            delivery.c.identity == failover_chain.c.identity,
            delivery.c.failover_step == step,
        )
        .scalar_subquery()
    )
    moved = conn.execute(
        update(failover_chain)
        .where(
            failover_chain.c.id.in_(chain_ids),
            failover_chain.c.status == "waiting",
            failover_chain.c.step == step,
        )
        .values(
            # Past its TTL nothing more would go out: the chain ends.
            step=literal(count, Integer) if expired else _next_step(note, after=step),
            reason=reason,
            failover_of=previous,
            deadline=now + timedelta(seconds=note.policy.wait),
            date_updated=now,
        )
        .returning(failover_chain.c.id, failover_chain.c.step, failover_chain.c.identity)
    ).all()
    ended = [row.id for row in moved if row.step >= count]
    if ended:
        conn.execute(
            update(failover_chain)
            .where(failover_chain.c.id.in_(ended))
            .values(status="exhausted", deadline=None)
        )
    going = [row.identity for row in moved if row.step < count]
    if going:
        _send(conn, note=note, now=now, identities=going)
    return len(moved)


def after_failures(conn: Connection, *, delivery_ids: Collection[int], now: datetime) -> int:
    """Move on at once the chains whose current group has failed for good with these
    deliveries (just failed or expired, in this transaction); how many moved.

    The chains are locked before they are checked: two workers storing the last two failures of
    one group at the same moment each see the other's delivery still being sent, and the one
    that gets the lock second checks again, after the first committed, and sees both.
    """
    if not delivery_ids:
        return 0
    # By primary and unique keys only: the plans stay right while the tables' statistics are
    # out of date, as they are just after the first big fan-out.
    steps: dict[tuple[int, str], set[int]] = defaultdict(set)
    for notification_id, identity, step in conn.execute(
        select(delivery.c.notification_id, delivery.c.identity, delivery.c.failover_step).where(
            delivery.c.id.in_(delivery_ids), delivery.c.failover_step.is_not(None)
        )
    ):
        steps[(notification_id, identity)].add(step)
    locked: list[int] = []
    for notification_id in sorted({key[0] for key in steps}):
        # PostgreSQL re-reads a row it had to wait for: a chain moved on meanwhile shows it.
        for chain_id, identity, step in conn.execute(
            select(failover_chain.c.id, failover_chain.c.identity, failover_chain.c.step)
            .where(
                failover_chain.c.notification_id == notification_id,
                failover_chain.c.identity.in_(
                    sorted(identity for n, identity in steps if n == notification_id)
                ),
                failover_chain.c.status == "waiting",
            )
            .order_by(failover_chain.c.id)
            .with_for_update()
        ):
            if step in steps[(notification_id, identity)]:
                locked.append(chain_id)
    if not locked:
        return 0
    in_group = and_(
        delivery.c.notification_id == failover_chain.c.notification_id,
        delivery.c.identity == failover_chain.c.identity,
        delivery.c.failover_step == failover_chain.c.step,
    )
    still_open = exists().where(in_group, delivery.c.status.not_in(ENDED))
    dead = (
        exists()
        .select_from(delivery.join(binding, binding.c.id == delivery.c.binding_id))
        .where(in_group, binding.c.inactive_since.is_not(None))
    )
    failed = conn.execute(
        select(
            failover_chain.c.id,
            failover_chain.c.notification_id,
            failover_chain.c.step,
            dead.label("dead"),
        ).where(failover_chain.c.id.in_(locked), not_(still_open))
    ).all()
    groups: dict[tuple[int, int, str], list[int]] = defaultdict(list)
    for row in failed:
        reason = DEAD_TOKEN if row.dead else FAILED
        groups[(row.notification_id, row.step, reason)].append(row.id)
    return _advance_groups(conn, groups=groups, now=now)


def _advance_groups(
    conn: Connection, *, groups: dict[tuple[int, int, str], list[int]], now: datetime
) -> int:
    """`_advance` per (notification, step, reason) of `groups`, in a stable order."""
    moved = 0
    notes: dict[int, _Notification | None] = {}
    for (notification_id, step, reason), chain_ids in sorted(groups.items()):
        if notification_id not in notes:
            notes[notification_id] = _notification(conn, notification_id)
        note = notes[notification_id]
        if note is not None:
            moved += _advance(
                conn, note=note, step=step, chain_ids=chain_ids, reason=reason, now=now
            )
    return moved


def fire_due(conn: Connection, *, now: datetime, limit: int = TIMER_BATCH) -> int:
    """Move on up to `limit` chains whose deadline passed unconfirmed; how many were due.

    One query on the partial index ix_failover_chain_due finds them, however many chains are
    waiting. On PostgreSQL it locks them until commit and skips those another transaction
    holds (a confirmation, a failure being stored): they are looked at again next time.
    """
    due = (
        select(failover_chain.c.id, failover_chain.c.notification_id, failover_chain.c.step)
        .where(failover_chain.c.deadline <= now, failover_chain.c.status == "waiting")
        .order_by(failover_chain.c.deadline)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    rows = conn.execute(due).all()
    groups: dict[tuple[int, int, str], list[int]] = defaultdict(list)
    for row in rows:
        groups[(row.notification_id, row.step, NO_RECEIPT)].append(row.id)
    _advance_groups(conn, groups=groups, now=now)
    return len(rows)


# ---------------------------------------------------------------------------------------------
# Confirmations and what the API shows


def confirm(conn: Connection, *, delivery_id: int, now: datetime) -> None:
    """The identity got delivery `delivery_id`: its chain stops, if the delivery is of its
    current group or an earlier one. A late confirmation (the chain had moved on) does not undo
    what was sent since, but nothing more is; one after the chain ran out marks it confirmed."""
    row = conn.execute(
        select(delivery.c.notification_id, delivery.c.identity, delivery.c.failover_step).where(
            delivery.c.id == delivery_id
        )
    ).first()
    if row is None or row.failover_step is None:
        return
    conn.execute(
        update(failover_chain)
        .where(
            failover_chain.c.notification_id == row.notification_id,
            failover_chain.c.identity == row.identity,
            failover_chain.c.status.in_(("waiting", "exhausted")),
            failover_chain.c.step >= row.failover_step,
        )
        .values(
            status="confirmed", confirmed_step=row.failover_step, deadline=None, date_updated=now
        )
    )


def waiting(notification_id: ColumnElement[int]) -> ColumnElement[bool]:
    """Whether the notification has a chain still waiting: it is not complete before that.

    A waiting chain is one with a deadline (served by ix_failover_chain_waiting).
    """
    return exists().where(
        failover_chain.c.notification_id == notification_id,
        failover_chain.c.deadline.is_not(None),
    )


def summary(conn: Connection, *, notification_id: int) -> dict[str, Any] | None:
    """The notification's failover policy and what it did, per identity; None without one.

    `{"channels", "wait", "identities": {"total", "waiting", "confirmed", "exhausted",
    "by_channel": {group: {"reached", "confirmed"}}}}`: reached = identities with a delivery of
    that group the provider took; confirmed = identities whose chain a delivery of that group
    confirmed. A few indexed aggregates over the notification's chains.
    """
    policy_json = conn.scalar(
        select(notification.c.failover).where(notification.c.id == notification_id)
    )
    if policy_json is None:
        return None
    policy = from_json(policy_json)
    statuses: dict[str, int] = dict(
        conn.execute(
            select(failover_chain.c.status, func.count())
            .where(failover_chain.c.notification_id == notification_id)
            .group_by(failover_chain.c.status)
        ).all()
    )
    confirmed: dict[int, int] = dict(
        conn.execute(
            select(failover_chain.c.confirmed_step, func.count())
            .where(
                failover_chain.c.notification_id == notification_id,
                failover_chain.c.status == "confirmed",
            )
            .group_by(failover_chain.c.confirmed_step)
        ).all()
    )
    reached: dict[int, int] = dict(
        conn.execute(
            select(delivery.c.failover_step, func.count(delivery.c.identity.distinct()))
            .where(
                delivery.c.notification_id == notification_id,
                delivery.c.failover_step.is_not(None),
                delivery.c.status.in_(REACHED),
            )
            .group_by(delivery.c.failover_step)
        ).all()
    )
    by_status = {
        status: statuses.get(status, 0) for status in ("waiting", "confirmed", "exhausted")
    }
    return {
        **policy.to_json(),
        "identities": {
            "total": sum(statuses.values()),
            **by_status,
            "by_channel": {
                name: {"reached": reached.get(step, 0), "confirmed": confirmed.get(step, 0)}
                for step, name in enumerate(policy.channels)
            },
        },
    }
