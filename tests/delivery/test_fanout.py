"""Fan-out: who a query notification reaches, and chunked expansion that survives a crash.

Targeting follows Notify: identities are alternatives, each tag must match (with the built-in
`all` and binding-type tags), segments reach their users' bindings, and the kinds combine with
AND. Retired bindings are never reached.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, select, update

from clarion.delivery import fanout
from clarion.store import bindings, notifications, queue, users
from clarion.store import fanout as store_fanout
from clarion.store.bindings import Registration
from clarion.store.clock import utcnow
from clarion.store.database import Database
from clarion.store.notifications import NewNotification
from clarion.store.tables import binding, delivery, job, notification
from support import insert_service, quiet_the_queue

LEASE = timedelta(seconds=60)


@pytest.fixture
async def service_id(database: Database) -> int:
    """A service of its own; the queue is emptied of other tests' work first."""

    def op(conn: Connection) -> int:
        quiet_the_queue(conn)
        now = utcnow()
        service_id, _ = insert_service(conn, name="fanout", now=now)
        return service_id

    return await database.transaction(op)


async def register(
    database: Database,
    service_id: int,
    identity: str,
    address: str,
    *,
    binding_type: str = "apn",
    tags: Sequence[str] = (),
) -> int:
    def op(conn: Connection) -> int:
        registered = bindings.register(
            conn,
            service_id=service_id,
            reg=Registration(
                identity=identity,
                binding_type=binding_type,
                address=address,
                tags=list(tags),
                notification_protocol_version="3",
                credential_id=None,
                endpoint=None,
            ),
        )
        return int(registered["id"])

    return await database.write(op)


async def notify(
    database: Database,
    service_id: int,
    *,
    identities: Sequence[str] = (),
    tags: Sequence[str] = (),
    segments: Sequence[str] = (),
) -> int:
    """A query notification as the API stores it: the row and its pending fan-out job."""

    def op(conn: Connection) -> int:
        created = notifications.create(
            conn,
            service_id=service_id,
            new=NewNotification(
                targets={
                    "identities": list(identities),
                    "tags": list(tags),
                    "segments": list(segments),
                },
                content={"body": "hello"},
                priority="high",
                ttl=3600,
                delivery_callback_url=None,
                direct=[],
            ),
        )
        return int(conn.scalar(select(notification.c.id).where(notification.c.sid == created.sid)))

    return await database.write(op)


async def claim_job(database: Database, owner: str, now: datetime) -> queue.ClaimedJob:
    (claimed,) = await database.transaction(
        functools.partial(
            queue.claim_jobs, owner=owner, now=now, lease=LEASE, limit=1, kinds=["fanout"]
        )
    )
    return claimed


async def expand(database: Database, notification_id: int, *, chunk_size: int = 100) -> None:
    """Claim the notification's fan-out job and run it to the end."""
    now = utcnow()
    claimed = await claim_job(database, "worker-a", now)
    assert claimed.notification_id == notification_id
    await fanout.run(
        database,
        claimed,
        owner="worker-a",
        clock=utcnow,
        lease=LEASE,
        chunk_size=chunk_size,
        progressed=lambda: None,
        stopping=lambda: False,
    )


async def reached(database: Database, notification_id: int) -> list[str]:
    """The addresses the notification's deliveries go to (sorted, duplicates kept)."""

    def op(conn: Connection) -> list[str]:
        return sorted(
            conn.scalars(
                select(delivery.c.address).where(delivery.c.notification_id == notification_id)
            )
        )

    return await database.read(op)


async def job_of(database: Database, notification_id: int) -> dict[str, Any]:
    def op(conn: Connection) -> dict[str, Any]:
        row = conn.execute(select(job).where(job.c.notification_id == notification_id)).mappings()
        return dict(row.one())

    return await database.read(op)


async def status_of(database: Database, notification_id: int) -> str:
    def op(conn: Connection) -> str:
        return str(
            conn.scalar(select(notification.c.status).where(notification.c.id == notification_id))
        )

    return await database.read(op)


# ---------------------------------------------------------------------------------------------


async def test_identities_are_alternatives_and_reach_every_channel(
    database: Database, service_id: int
) -> None:
    await register(database, service_id, "alice", "a1")
    await register(database, service_id, "alice", "+15005550006", binding_type="sms")
    await register(database, service_id, "bob", "b1")
    await register(database, service_id, "carol", "c1")

    notification_id = await notify(database, service_id, identities=["alice", "bob"])
    await expand(database, notification_id)

    assert await reached(database, notification_id) == ["+15005550006", "a1", "b1"]


async def test_every_tag_must_match(database: Database, service_id: int) -> None:
    await register(database, service_id, "u1", "both", tags=["news", "vip"])
    await register(database, service_id, "u2", "news-only", tags=["news"])
    await register(database, service_id, "u3", "vip-only", tags=["vip"])

    notification_id = await notify(database, service_id, tags=["news", "vip"])
    await expand(database, notification_id)

    assert await reached(database, notification_id) == ["both"]


async def test_builtin_tags_all_and_binding_type(database: Database, service_id: int) -> None:
    await register(database, service_id, "u1", "apn-vip", tags=["vip"])
    await register(database, service_id, "u2", "apn-plain")
    await register(database, service_id, "u3", "fcm-vip", binding_type="fcm", tags=["vip"])

    everyone = await notify(database, service_id, tags=["all"])
    apn_vips = await notify(database, service_id, tags=["apn", "vip"])
    await expand(database, everyone)
    await expand(database, apn_vips)

    assert await reached(database, everyone) == ["apn-plain", "apn-vip", "fcm-vip"]
    assert await reached(database, apn_vips) == ["apn-vip"]


async def test_identity_and_tag_combine_with_and(database: Database, service_id: int) -> None:
    await register(database, service_id, "alice", "alice-phone", tags=["preferred_device"])
    await register(database, service_id, "alice", "alice-tablet")
    await register(database, service_id, "bob", "bob-phone", tags=["preferred_device"])

    notification_id = await notify(
        database, service_id, identities=["alice"], tags=["preferred_device"]
    )
    await expand(database, notification_id)

    assert await reached(database, notification_id) == ["alice-phone"]


async def test_segments_reach_their_members_bindings(database: Database, service_id: int) -> None:
    await register(database, service_id, "alice", "alice-1", tags=["beta"])
    await register(database, service_id, "alice", "alice-2")
    await register(database, service_id, "bob", "bob-1", tags=["beta"])
    await register(database, service_id, "carol", "carol-1", tags=["beta"])

    def join(conn: Connection) -> None:
        users.add_membership(conn, service_id=service_id, identity="alice", segment_name="s1")
        users.add_membership(conn, service_id=service_id, identity="bob", segment_name="s2")

    await database.write(join)

    either = await notify(database, service_id, segments=["s1", "s2"])
    s1_beta = await notify(database, service_id, segments=["s1"], tags=["beta"])
    await expand(database, either)
    await expand(database, s1_beta)

    assert await reached(database, either) == ["alice-1", "alice-2", "bob-1"]
    assert await reached(database, s1_beta) == ["alice-1"]


async def test_retired_bindings_are_skipped(database: Database, service_id: int) -> None:
    await register(database, service_id, "u1", "alive")
    retired = await register(database, service_id, "u2", "dead-token")

    def retire(conn: Connection) -> None:
        conn.execute(
            update(binding)
            .where(binding.c.id == retired)
            .values(inactive_since=utcnow(), inactive_reason="Unregistered")
        )

    await database.transaction(retire)
    notification_id = await notify(database, service_id, tags=["all"])
    await expand(database, notification_id)

    assert await reached(database, notification_id) == ["alive"]


async def test_deliveries_carry_the_bindings_identity_credential_and_priority(
    database: Database, service_id: int
) -> None:
    binding_id = await register(database, service_id, "alice", "a1")
    notification_id = await notify(database, service_id, identities=["alice"])
    await expand(database, notification_id)

    def op(conn: Connection) -> dict[str, Any]:
        rows = conn.execute(
            select(delivery).where(delivery.c.notification_id == notification_id)
        ).mappings()
        return dict(rows.one())

    row = await database.read(op)
    assert row["binding_id"] == binding_id
    assert (row["identity"], row["channel"], row["address"]) == ("alice", "apn", "a1")
    assert (row["status"], row["priority"], row["attempts"]) == ("pending", 0, 0)
    assert row["credential_id"] is None


async def test_big_audiences_expand_in_chunks_and_finish_the_job(
    database: Database, service_id: int
) -> None:
    for n in range(23):
        await register(database, service_id, f"user-{n}", f"token-{n:02}")
    notification_id = await notify(database, service_id, tags=["all"])

    await expand(database, notification_id, chunk_size=5)

    assert await reached(database, notification_id) == [f"token-{n:02}" for n in range(23)]
    finished = await job_of(database, notification_id)
    assert (finished["status"], finished["lease_owner"]) == ("done", None)
    assert await status_of(database, notification_id) == "dispatched"


async def test_an_explicit_tag_is_walked_in_chunks_with_the_other_targets_applied(
    database: Database, service_id: int
) -> None:
    for n in range(23):
        tags = ["vip", "news"] if n % 3 == 0 else ["news"]
        await register(database, service_id, f"user-{n}", f"token-{n:02}", tags=tags)
    await register(database, service_id, "fcm-user", "fcm-vip", binding_type="fcm", tags=["vip"])
    notification_id = await notify(database, service_id, tags=["news", "vip", "apn"])

    await expand(database, notification_id, chunk_size=2)

    assert await reached(database, notification_id) == [f"token-{n:02}" for n in range(0, 23, 3)]
    assert await status_of(database, notification_id) == "dispatched"


async def test_fanout_resumes_after_a_crash_without_duplicates(
    database: Database, service_id: int
) -> None:
    ids = [await register(database, service_id, f"user-{n}", f"token-{n:02}") for n in range(23)]
    notification_id = await notify(database, service_id, tags=["all"])
    now = utcnow()
    crashed = await claim_job(database, "crashed-worker", now)
    for _ in range(2):  # two chunks committed, then the process dies
        chunk = await database.transaction(
            functools.partial(
                store_fanout.expand_chunk,
                job_id=crashed.id,
                owner="crashed-worker",
                now=now,
                lease=LEASE,
                chunk_size=5,
            )
        )
        assert (chunk.inserted, chunk.done) == (5, False)
    assert await status_of(database, notification_id) == "fanning_out"
    assert len(await reached(database, notification_id)) == 10

    later = now + LEASE * 2
    await database.transaction(functools.partial(queue.sweep_expired_leases, now=later))
    resumed = await claim_job(database, "worker-b", later)
    # It resumes after the last committed chunk's last binding.
    assert (resumed.id, resumed.attempts, resumed.cursor) == (crashed.id, 2, {"after": ids[9]})
    await fanout.run(
        database,
        resumed,
        owner="worker-b",
        clock=lambda: later,
        lease=LEASE,
        chunk_size=5,
        progressed=lambda: None,
        stopping=lambda: False,
    )

    assert await reached(database, notification_id) == [f"token-{n:02}" for n in range(23)]
    assert await status_of(database, notification_id) == "dispatched"


async def test_a_chunk_written_twice_is_absorbed(database: Database, service_id: int) -> None:
    for n in range(8):
        await register(database, service_id, f"user-{n}", f"token-{n}")
    notification_id = await notify(database, service_id, tags=["all"])
    now = utcnow()
    claimed = await claim_job(database, "worker-a", now)
    expand_chunk = functools.partial(
        store_fanout.expand_chunk,
        job_id=claimed.id,
        owner="worker-a",
        now=now,
        lease=LEASE,
        chunk_size=5,
    )
    await database.transaction(expand_chunk)

    def rewind(conn: Connection) -> None:
        conn.execute(update(job).where(job.c.id == claimed.id).values(cursor=None))

    await database.transaction(rewind)
    again = await database.transaction(expand_chunk)
    last = await database.transaction(expand_chunk)

    assert (again.inserted, again.done) == (0, False)
    assert (last.inserted, last.done) == (3, True)
    assert await reached(database, notification_id) == [f"token-{n}" for n in range(8)]


async def test_a_fanout_taken_over_by_another_worker_stops(
    database: Database, service_id: int
) -> None:
    await register(database, service_id, "u1", "t1")
    notification_id = await notify(database, service_id, tags=["all"])
    now = utcnow()
    stale = await claim_job(database, "stalled-worker", now)
    later = now + LEASE * 2
    await database.transaction(functools.partial(queue.sweep_expired_leases, now=later))
    await claim_job(database, "worker-b", later)

    with pytest.raises(queue.LeaseLostError):
        await database.transaction(
            functools.partial(
                store_fanout.expand_chunk,
                job_id=stale.id,
                owner="stalled-worker",
                now=later,
                lease=LEASE,
            )
        )
    assert await reached(database, notification_id) == []


async def test_an_empty_audience_completes_the_notification(
    database: Database, service_id: int
) -> None:
    await register(database, service_id, "u1", "t1")
    notification_id = await notify(database, service_id, identities=["nobody"])

    await expand(database, notification_id)

    assert await reached(database, notification_id) == []
    assert await status_of(database, notification_id) == "completed"


async def test_a_stopping_worker_hands_the_job_back_at_its_cursor(
    database: Database, service_id: int
) -> None:
    for n in range(12):
        await register(database, service_id, f"user-{n}", f"token-{n:02}")
    notification_id = await notify(database, service_id, tags=["all"])
    now = utcnow()
    claimed = await claim_job(database, "worker-a", now)

    await fanout.run(
        database,
        claimed,
        owner="worker-a",
        clock=utcnow,
        lease=LEASE,
        chunk_size=5,
        progressed=lambda: None,
        stopping=lambda: True,
    )

    handed_back = await job_of(database, notification_id)
    assert (handed_back["status"], handed_back["lease_owner"]) == ("pending", None)
    assert handed_back["cursor"] is not None
    assert len(await reached(database, notification_id)) == 5
    resumed = await claim_job(database, "worker-b", now)
    assert resumed.attempts == 1
