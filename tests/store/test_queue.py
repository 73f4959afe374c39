"""The delivery queue's statements: claims with leases, owner-only results, sweeping, expiry.

The queue is shared by every tenant, so each test starts from an idle queue (earlier tests'
leftover work is closed) and controls time by passing `now`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import pytest
from sqlalchemy import Connection, insert, select

from clarion import sids
from clarion.store import deliveries, queue
from clarion.store.clock import utcnow
from clarion.store.database import Database
from clarion.store.queue import Completion
from clarion.store.tables import (
    binding,
    delivery,
    job,
    notification,
    service,
)
from support import CredentialRow, insert_service, quiet_the_queue

T = TypeVar("T")
LEASE = timedelta(seconds=60)


@pytest.fixture
async def now(database: Database) -> datetime:
    """The test's time; the queue is emptied of other tests' work first."""
    await database.transaction(quiet_the_queue)
    return utcnow()


def run(database: Database, fn: Callable[..., T], **kwargs: Any) -> Any:
    return database.transaction(functools.partial(fn, **kwargs))


@dataclass(frozen=True)
class Service:
    id: int
    credentials: dict[str, int]


async def new_service(database: Database, now: datetime, **credentials: str) -> Service:
    """A service of a fresh account; `apn_credential_id="apn"` sets a credential of that type."""

    def op(conn: Connection) -> Service:
        service_id, ids = insert_service(
            conn,
            name="queue",
            now=now,
            credentials={column: CredentialRow(type_) for column, type_ in credentials.items()},
        )
        return Service(service_id, ids)

    return await database.transaction(op)


async def new_binding(
    database: Database,
    svc: Service,
    now: datetime,
    *,
    binding_type: str = "apn",
    credential_id: int | None = None,
) -> int:
    def op(conn: Connection) -> int:
        return int(
            conn.scalar(
                insert(binding)
                .values(
                    sid=sids.new_sid(sids.BINDING),
                    service_id=svc.id,
                    credential_id=credential_id,
                    identity="someone",
                    binding_type=binding_type,
                    address=sids.new_sid("a")[1:],
                    date_created=now,
                    date_updated=now,
                )
                .returning(binding.c.id)
            )
        )

    return await database.transaction(op)


async def new_notification(
    database: Database,
    svc: Service,
    now: datetime,
    deliveries: Sequence[dict[str, Any]],
    *,
    ttl: int = 3600,
    priority: str = "high",
) -> tuple[int, list[int]]:
    """A notification and its deliveries; each delivery dict overrides the defaults."""

    def op(conn: Connection) -> tuple[int, list[int]]:
        notification_id = conn.scalar(
            insert(notification)
            .values(
                sid=sids.new_sid(sids.NOTIFICATION),
                service_id=svc.id,
                targets={},
                content={"body": "hello"},
                priority=priority,
                ttl=ttl,
                expires_at=now + timedelta(seconds=ttl),
                status="queued",
                date_created=now,
            )
            .returning(notification.c.id)
        )
        rows = [
            {
                "notification_id": notification_id,
                "binding_id": None,
                "credential_id": None,
                "channel": "apn",
                "address": f"address-{n}",
                "status": "pending",
                "priority": 0 if priority == "high" else 1,
                "next_attempt_at": now,
                "date_created": now,
                "date_updated": now,
                **overrides,
            }
            for n, overrides in enumerate(deliveries)
        ]
        if not rows:
            return int(notification_id), []
        ids = conn.scalars(
            insert(delivery).returning(delivery.c.id, sort_by_parameter_order=True), rows
        ).all()
        return int(notification_id), list(ids)

    return await database.transaction(op)


async def delivery_rows(database: Database, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    def op(conn: Connection) -> dict[int, dict[str, Any]]:
        result = conn.execute(select(delivery).where(delivery.c.id.in_(ids))).mappings()
        return {row["id"]: dict(row) for row in result}

    return await database.read(op)


async def events_of(database: Database, delivery_id: int) -> list[str]:
    """The delivery's history as the API and the portal show it."""

    def op(conn: Connection) -> list[str]:
        return [event["kind"] for event in deliveries.events(conn, delivery_id=delivery_id)]

    return await database.read(op)


async def notification_status(database: Database, notification_id: int) -> str:
    def op(conn: Connection) -> str:
        return str(
            conn.scalar(select(notification.c.status).where(notification.c.id == notification_id))
        )

    return await database.read(op)


async def claim(database: Database, owner: str, now: datetime, limit: int = 100) -> Any:
    return await run(
        database, queue.claim_deliveries, owner=owner, now=now, lease=LEASE, limit=limit
    )


def sent(delivery_id: int, notification_id: int) -> Completion:
    return Completion(
        delivery_id=delivery_id,
        notification_id=notification_id,
        status="sent",
        event="sent",
        provider_ref=f"ref-{delivery_id}",
    )


# ---------------------------------------------------------------------------------------------


async def test_claim_leases_only_due_deliveries_with_what_sending_needs(
    database: Database, now: datetime
) -> None:
    svc = await new_service(database, now, apn_credential_id="apn")
    notification_id, (due, later) = await new_notification(
        database, svc, now, [{}, {"next_attempt_at": now + timedelta(minutes=5)}]
    )

    batch = await claim(database, "worker-a", now)

    assert [d.id for d in batch.deliveries] == [due]
    (claimed,) = batch.deliveries
    assert claimed.attempts == 1
    assert claimed.ambiguous is False
    assert claimed.credential_id == svc.credentials["apn_credential_id"]
    work = batch.notifications[notification_id]
    assert work.content == {"body": "hello"}
    assert (work.priority, work.ttl) == ("high", 3600)
    rows = await delivery_rows(database, [due, later])
    assert rows[due]["status"] == "sending"
    assert rows[due]["lease_owner"] == "worker-a"
    assert rows[due]["lease_expires_at"] == now + LEASE
    assert rows[later]["status"] == "pending"


async def test_claim_takes_high_priority_before_older_low_priority(
    database: Database, now: datetime
) -> None:
    svc = await new_service(database, now)
    _, low = await new_notification(database, svc, now - timedelta(minutes=1), [{}], priority="low")
    _, high = await new_notification(database, svc, now, [{}])

    batch = await claim(database, "worker-a", now, limit=1)

    assert [d.id for d in batch.deliveries] == high
    assert [d.id for d in (await claim(database, "worker-a", now)).deliveries] == low


async def test_concurrent_claimers_never_receive_the_same_delivery(
    database: Database, database_url: str, now: datetime
) -> None:
    svc = await new_service(database, now)
    _, ids = await new_notification(database, svc, now, [{} for _ in range(400)])
    other = Database(database_url)  # another process's connections
    try:
        batches = await asyncio.gather(
            *(claim(database if n % 2 else other, f"worker-{n}", now, limit=30) for n in range(16))
        )
    finally:
        await other.close()

    claimed = [d.id for batch in batches for d in batch.deliveries]
    assert len(claimed) == len(set(claimed)) == len(ids)
    rows = await delivery_rows(database, ids)
    owners = {d.id: f"worker-{n}" for n, batch in enumerate(batches) for d in batch.deliveries}
    assert all(rows[i]["lease_owner"] == owners[i] for i in ids)


async def test_results_are_applied_only_by_the_lease_owner(
    database: Database, now: datetime
) -> None:
    svc = await new_service(database, now)
    notification_id, (delivery_id,) = await new_notification(database, svc, now, [{}])
    await claim(database, "worker-a", now)

    stranger = await run(
        database,
        queue.complete_deliveries,
        owner="worker-b",
        now=now,
        completions=[sent(delivery_id, notification_id)],
    )
    assert stranger == set()
    assert (await delivery_rows(database, [delivery_id]))[delivery_id]["status"] == "sending"

    owner = await run(
        database,
        queue.complete_deliveries,
        owner="worker-a",
        now=now,
        completions=[sent(delivery_id, notification_id)],
    )
    assert owner == {delivery_id}
    row = (await delivery_rows(database, [delivery_id]))[delivery_id]
    assert (row["status"], row["provider_ref"], row["lease_owner"]) == (
        "sent",
        f"ref-{delivery_id}",
        None,
    )
    assert await events_of(database, delivery_id) == ["sent"]


async def test_a_receipt_that_beats_the_sent_result_leaves_the_delivery_delivered(
    database: Database, now: datetime
) -> None:
    svc = await new_service(database, now)
    notification_id, (receipted, plain) = await new_notification(database, svc, now, [{}, {}])
    await claim(database, "worker-a", now)

    def receipt(conn: Connection) -> None:
        service_sid, notification_sid = conn.execute(
            select(service.c.sid, notification.c.sid)
            .join(notification)
            .where(notification.c.id == notification_id)
        ).one()
        deliveries.record_receipt(
            conn,
            service_sid=service_sid,
            notification_sid=notification_sid,
            delivery_id=receipted,
            state="delivered",
            now=now,
        )

    await database.transaction(receipt)
    await run(
        database,
        queue.complete_deliveries,
        owner="worker-a",
        now=now,
        completions=[sent(receipted, notification_id), sent(plain, notification_id)],
    )

    rows = await delivery_rows(database, [receipted, plain])
    assert (rows[receipted]["status"], rows[plain]["status"]) == ("delivered", "sent")
    assert rows[receipted]["provider_ref"] == f"ref-{receipted}"
    assert await events_of(database, receipted) == ["receipt", "sent"]


async def test_a_lease_that_runs_out_is_swept_back_as_ambiguous(
    database: Database, now: datetime
) -> None:
    svc = await new_service(database, now)
    notification_id, (delivery_id,) = await new_notification(database, svc, now, [{}])
    await claim(database, "crashed-worker", now)

    early = await run(database, queue.sweep_expired_leases, now=now + LEASE / 2)
    assert early.deliveries == 0
    swept = await run(database, queue.sweep_expired_leases, now=now + LEASE * 2)
    assert swept.deliveries == 1

    row = (await delivery_rows(database, [delivery_id]))[delivery_id]
    assert (row["status"], row["ambiguous"], row["lease_owner"]) == ("pending", True, None)
    late = await run(
        database,
        queue.complete_deliveries,
        owner="crashed-worker",
        now=now + LEASE * 2,
        completions=[sent(delivery_id, notification_id)],
    )
    assert late == set()
    (again,) = (await claim(database, "worker-b", now + LEASE * 2)).deliveries
    assert (again.id, again.attempts, again.ambiguous) == (delivery_id, 2, True)
    assert await events_of(database, delivery_id) == ["lease_expired"]


async def test_retry_goes_back_to_the_queue_at_its_time(database: Database, now: datetime) -> None:
    svc = await new_service(database, now)
    notification_id, (delivery_id,) = await new_notification(database, svc, now, [{}])
    await claim(database, "worker-a", now)
    retry_at = now + timedelta(seconds=30)

    await run(
        database,
        queue.complete_deliveries,
        owner="worker-a",
        now=now,
        completions=[
            Completion(
                delivery_id=delivery_id,
                notification_id=notification_id,
                status="pending",
                event="retry",
                next_attempt_at=retry_at,
                error_code="TooManyRequests",
            )
        ],
    )

    assert (await claim(database, "worker-a", now + timedelta(seconds=29))).deliveries == []
    (again,) = (await claim(database, "worker-a", retry_at)).deliveries
    assert again.attempts == 2
    assert await notification_status(database, notification_id) == "queued"


async def test_dead_address_retires_the_binding_and_fails_its_other_queued_deliveries(
    database: Database, now: datetime
) -> None:
    svc = await new_service(database, now)
    binding_id = await new_binding(database, svc, now)
    first, (dead,) = await new_notification(database, svc, now, [{"binding_id": binding_id}])
    second, (queued,) = await new_notification(
        database, svc, now, [{"binding_id": binding_id, "next_attempt_at": now + LEASE}]
    )
    await claim(database, "worker-a", now)

    await run(
        database,
        queue.complete_deliveries,
        owner="worker-a",
        now=now,
        completions=[
            Completion(
                delivery_id=dead,
                notification_id=first,
                status="failed",
                event="dead_address",
                error_code="Unregistered",
                error_message="The device token is inactive",
                retire_binding_id=binding_id,
            )
        ],
    )

    def read_binding(conn: Connection) -> Any:
        return conn.execute(
            select(binding.c.inactive_since, binding.c.inactive_reason).where(
                binding.c.id == binding_id
            )
        ).one()

    retired = await database.read(read_binding)
    assert retired.inactive_since == now
    assert retired.inactive_reason == "Unregistered: The device token is inactive"
    rows = await delivery_rows(database, [dead, queued])
    assert rows[queued]["status"] == "failed"
    assert rows[queued]["error_code"] == "Unregistered"
    assert await events_of(database, queued) == ["binding_retired"]
    assert await notification_status(database, second) == "completed"


async def test_notification_completes_when_its_last_delivery_is_final(
    database: Database, now: datetime
) -> None:
    svc = await new_service(database, now)
    notification_id, (one, two) = await new_notification(database, svc, now, [{}, {}])
    await claim(database, "worker-a", now)
    complete = functools.partial(
        run, database, queue.complete_notifications, now=now, ids=[notification_id]
    )

    await run(
        database,
        queue.complete_deliveries,
        owner="worker-a",
        now=now,
        completions=[sent(one, notification_id)],
    )
    assert await complete() == []
    assert await notification_status(database, notification_id) == "queued"
    await run(
        database,
        queue.complete_deliveries,
        owner="worker-a",
        now=now,
        completions=[sent(two, notification_id)],
    )
    assert await complete() == [notification_id]
    assert await notification_status(database, notification_id) == "completed"


async def test_overdue_deliveries_expire_without_ever_being_claimed(
    database: Database, now: datetime
) -> None:
    svc = await new_service(database, now)
    notification_id, ids = await new_notification(database, svc, now, [{}, {}, {}], ttl=60)
    later = now + timedelta(seconds=61)

    assert await run(database, queue.expire_overdue, now=now) == 0
    assert await run(database, queue.expire_overdue, now=later, limit=2) == 2
    assert await run(database, queue.expire_overdue, now=later, limit=2) == 1

    assert (await claim(database, "worker-a", later)).deliveries == []
    rows = await delivery_rows(database, ids)
    assert {row["status"] for row in rows.values()} == {"expired"}
    assert await notification_status(database, notification_id) == "completed"


async def test_ttl_zero_deliveries_are_left_to_their_one_attempt(
    database: Database, now: datetime
) -> None:
    """Notify's Ttl=0 means "try once now": its delivery is attempted however late it is."""
    svc = await new_service(database, now)
    _, (delivery_id,) = await new_notification(database, svc, now, [{}], ttl=0)

    assert await run(database, queue.expire_overdue, now=now + timedelta(seconds=5)) == 0
    batch = await claim(database, "worker-a", now + timedelta(seconds=5))
    assert [d.id for d in batch.deliveries] == [delivery_id]


async def test_released_deliveries_return_to_the_queue(database: Database, now: datetime) -> None:
    svc = await new_service(database, now)
    _, (unsent, interrupted) = await new_notification(database, svc, now, [{}, {}])
    await claim(database, "worker-a", now)

    await run(
        database,
        queue.release_deliveries,
        owner="worker-a",
        now=now,
        ids=[unsent],
        maybe_sent=False,
    )
    await run(
        database,
        queue.release_deliveries,
        owner="worker-a",
        now=now,
        ids=[interrupted],
        maybe_sent=True,
    )

    rows = await delivery_rows(database, [unsent, interrupted])
    assert (rows[unsent]["status"], rows[unsent]["attempts"], rows[unsent]["ambiguous"]) == (
        "pending",
        0,
        False,
    )
    assert (
        rows[interrupted]["status"],
        rows[interrupted]["attempts"],
        rows[interrupted]["ambiguous"],
    ) == ("pending", 1, True)


async def test_credential_is_the_bindings_own_else_the_services_for_the_channel(
    database: Database, now: datetime
) -> None:
    svc = await new_service(
        database, now, apn_credential_id="apn", fcm_credential_id="fcm", gcm_credential_id="gcm"
    )
    own = await new_service(database, now, apn_credential_id="apn")
    binding_id = await new_binding(
        database, svc, now, credential_id=own.credentials["apn_credential_id"]
    )
    _, ids = await new_notification(
        database,
        svc,
        now,
        [
            {"channel": "apn"},
            {
                "channel": "apn",
                "binding_id": binding_id,
                "credential_id": own.credentials["apn_credential_id"],
            },
            {"channel": "gcm"},
            {"channel": "fcm"},
            {"channel": "sms"},
        ],
    )

    batch = await claim(database, "worker-a", now)

    credentials = {d.id: d.credential_id for d in batch.deliveries}
    assert [credentials[i] for i in ids] == [
        svc.credentials["apn_credential_id"],
        own.credentials["apn_credential_id"],
        svc.credentials["gcm_credential_id"],
        svc.credentials["fcm_credential_id"],
        None,
    ]


async def test_gcm_bindings_fall_back_to_the_services_fcm_credential(
    database: Database, now: datetime
) -> None:
    svc = await new_service(database, now, fcm_credential_id="fcm")
    await new_notification(database, svc, now, [{"channel": "gcm"}])

    (claimed,) = (await claim(database, "worker-a", now)).deliveries

    assert claimed.credential_id == svc.credentials["fcm_credential_id"]


async def test_jobs_are_leased_and_swept_like_deliveries(database: Database, now: datetime) -> None:
    svc = await new_service(database, now)
    notification_id, _ = await new_notification(database, svc, now, [])

    def add_job(conn: Connection) -> int:
        return int(
            conn.scalar(
                insert(job)
                .values(
                    kind="fanout", notification_id=notification_id, status="pending", run_at=now
                )
                .returning(job.c.id)
            )
        )

    job_id = await database.transaction(add_job)
    claim_job = functools.partial(
        run, database, queue.claim_jobs, lease=LEASE, limit=5, kinds=["fanout"]
    )

    (claimed,) = await claim_job(owner="worker-a", now=now)
    assert (claimed.id, claimed.attempts, claimed.max_attempts) == (job_id, 1, 10)
    assert await claim_job(owner="worker-b", now=now) == []
    with pytest.raises(queue.LeaseLostError):
        await run(database, queue.finish_job, job_id=job_id, owner="worker-b")

    swept = await run(database, queue.sweep_expired_leases, now=now + LEASE * 2)
    assert swept.jobs == 1
    (again,) = await claim_job(owner="worker-b", now=now + LEASE * 2)
    assert (again.id, again.attempts) == (job_id, 2)
    await run(database, queue.finish_job, job_id=job_id, owner="worker-b")
    assert await claim_job(owner="worker-b", now=now + LEASE * 3) == []
