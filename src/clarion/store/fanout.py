"""Fan-out SQL: a query notification's audience, expanded into delivery rows in chunks.

Each chunk is one transaction that inserts the deliveries of the next bindings in id order
(keyset, never OFFSET) with a server-side `INSERT … SELECT … ON CONFLICT DO NOTHING`, and moves
the job's cursor past them. A worker that dies mid-fan-out loses at most the chunk it was
writing; whoever resumes starts from the cursor, and the unique (notification, channel, address)
constraint absorbs anything written twice. No binding ever passes through Python.

With a failover policy, a chunk starts the failover chains of the identities its bindings belong
to instead (clarion.store.failover): the same keyset walk, the same crash safety (a chain is
unique per notification and identity).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    DateTime,
    Integer,
    String,
    Subquery,
    func,
    literal,
    select,
    update,
)

from clarion.addresses import BINDING_TYPES
from clarion.store import failover, queue
from clarion.store.bindings import has_tag
from clarion.store.dialect import insert_or_ignore
from clarion.store.notifications import PRIORITY_RANK
from clarion.store.tables import (
    binding,
    binding_tag,
    delivery,
    job,
    notification,
    segment,
    segment_membership,
    user,
)

# Bindings per chunk: large enough that per-transaction costs vanish, small enough that one
# chunk holds SQLite's single writer for only milliseconds (reference/architecture.md §2.4).
CHUNK_SIZE = 5000


@dataclass(frozen=True, kw_only=True)
class Chunk:
    inserted: int
    done: bool


def audience(*, service_id: int, targets: dict[str, list[str]]) -> list[ColumnElement[bool]]:
    """The bindings a query notification reaches.

    Identities are alternatives, as are segments; each tag must match (built-ins included);
    the kinds of target combine with AND. Retired bindings are never reached.
    """
    conditions = [binding.c.service_id == service_id, binding.c.inactive_since.is_(None)]
    if targets.get("identities"):
        conditions.append(binding.c.identity.in_(targets["identities"]))
    conditions.extend(has_tag(tag) for tag in targets.get("tags", []))
    if targets.get("segments"):
        members = (
            select(user.c.identity)
            .select_from(user.join(segment_membership).join(segment))
            .where(
                user.c.service_id == service_id,
                segment.c.service_id == service_id,
                segment.c.unique_name.in_(targets["segments"]),
            )
        )
        conditions.append(binding.c.identity.in_(members))
    return conditions


def expand_chunk(
    conn: Connection,
    *,
    job_id: int,
    owner: str,
    now: datetime,
    lease: timedelta,
    chunk_size: int = CHUNK_SIZE,
) -> Chunk:
    """Write the next chunk of a fan-out job's deliveries; renew its lease or finish it.

    Raises `queue.LeaseLostError` when the job is no longer `owner`'s.
    """
    cursor = queue.lock_job(conn, job_id=job_id, owner=owner) or {}
    after = int(cursor.get("after", 0))
    note = conn.execute(
        select(
            notification.c.id,
            notification.c.service_id,
            notification.c.targets,
            notification.c.priority,
            notification.c.status,
            notification.c.failover,
        ).where(notification.c.id == job.c.notification_id, job.c.id == job_id)
    ).one()
    if note.status == "queued":
        _set_status(conn, note.id, "fanning_out")
    conditions = audience(service_id=note.service_id, targets=note.targets)
    window = _window(conditions, note.targets, after=after, chunk_size=chunk_size)
    last, count = conn.execute(
        select(func.max(window.c.id), func.count()).select_from(window)
    ).one()
    inserted = 0
    if count:
        chunk = [*conditions, binding.c.id > after, binding.c.id <= last]
        if note.failover is not None:
            inserted = failover.start(
                conn,
                notification_id=note.id,
                identities=select(binding.c.identity).distinct().where(*chunk),
                now=now,
            )
        else:
            inserted = _insert_deliveries(
                conn,
                notification_id=note.id,
                priority=PRIORITY_RANK[note.priority],
                now=now,
                conditions=chunk,
            )
    if count < chunk_size:
        queue.finish_job(conn, job_id=job_id, owner=owner)
        _set_status(conn, note.id, "dispatched")
        queue.complete_notifications(conn, now=now, ids=[note.id])
        return Chunk(inserted=inserted, done=True)
    conn.execute(
        update(job)
        .where(job.c.id == job_id)
        .values(cursor={"after": last}, lease_expires_at=now + lease)
    )
    return Chunk(inserted=inserted, done=False)


def _window(
    conditions: list[ColumnElement[bool]],
    targets: dict[str, list[str]],
    *,
    after: int,
    chunk_size: int,
) -> Subquery:
    """The ids of the chunk's bindings: its last one is the keyset bound of the insert and the
    cursor. With an explicit tag among the targets the walk follows that tag's index rather than
    the service's bindings, so a tag on a few of a million bindings reads a few index entries."""
    explicit = [tag for tag in targets.get("tags", []) if tag != "all" and tag not in BINDING_TYPES]
    if not explicit:
        return (
            select(binding.c.id)
            .where(*conditions, binding.c.id > after)
            .order_by(binding.c.id)
            .limit(chunk_size)
            .subquery()
        )
    tagged = binding_tag.alias("tagged")
    return (
        select(tagged.c.binding_id.label("id"))
        .join(binding, binding.c.id == tagged.c.binding_id)
        .where(tagged.c.tag == explicit[0], tagged.c.binding_id > after, *conditions)
        .order_by(tagged.c.binding_id)
        .limit(chunk_size)
        .subquery()
    )


def _insert_deliveries(
    conn: Connection,
    *,
    notification_id: int,
    priority: int,
    now: datetime,
    conditions: list[ColumnElement[bool]],
) -> int:
    columns: dict[str, Any] = {
        "notification_id": literal(notification_id, Integer),
        "binding_id": binding.c.id,
        "identity": binding.c.identity,
        "channel": binding.c.binding_type,
        "address": binding.c.address,
        "credential_id": binding.c.credential_id,
        "status": literal("pending", String),
        "priority": literal(priority, Integer),
        "next_attempt_at": literal(now, DateTime),
        "date_created": literal(now, DateTime),
        "date_updated": literal(now, DateTime),
    }
    # The SELECT always has a WHERE, which SQLite needs to parse INSERT … SELECT … ON CONFLICT.
    statement = insert_or_ignore(conn, delivery).from_select(
        list(columns), select(*columns.values()).where(*conditions)
    )
    return conn.execute(statement).rowcount


def _set_status(conn: Connection, notification_id: int, status: str) -> None:
    """Move an open notification on; a finished one (completed, failed) stays as it is."""
    conn.execute(
        update(notification)
        .where(
            notification.c.id == notification_id,
            notification.c.status.in_(queue.OPEN_NOTIFICATION),
        )
        .values(status=status)
    )


def give_up(conn: Connection, *, job_id: int, owner: str, error: str) -> None:
    """A fan-out that failed for good: its notification is `failed`; what it wrote still goes."""
    notification_id = conn.scalar(select(job.c.notification_id).where(job.c.id == job_id))
    queue.fail_job(conn, job_id=job_id, owner=owner, error=error, retry_at=None)
    if notification_id is not None:
        _set_status(conn, notification_id, "failed")
