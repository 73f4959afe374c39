"""Failover: per identity, push first, then the next channel group when push can't reach them.

The worker runs step by step against the database, on both engines, with a test clock (timers
fire when the test moves time, never by sleeping). The provider is a scripted in-test channel
that answers by address, with the sandbox's conventions: `dead…` is an unregistered token,
`fail…` a refused message, anything else is accepted. Confirmations are what receipts and SMS
delivery reports will call: `clarion.store.failover.confirm`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from clarion.channels.base import Message, Outcome, Result
from clarion.delivery.channel_pool import Credential
from clarion.delivery.wakeup import LocalSignal, SoleLeader
from clarion.delivery.worker import Worker, WorkerConfig
from clarion.store import bindings, deliveries, failover, notifications, queue, users
from clarion.store.bindings import Registration
from clarion.store.clock import utcnow
from clarion.store.database import Database, engine_url
from clarion.store.notifications import DirectAddress, NewNotification
from clarion.store.tables import (
    binding,
    delivery,
    failover_chain,
    notification,
)
from clarion.vault import Vault
from support import Clock, CredentialRow, insert_service, quiet_the_queue

PUSH_THEN_SMS = {"channels": ["push", "sms"], "wait": 120}
PHONE = "+15005550006"


class ScriptedChannel:
    """A provider double for every channel: `dead…` unregistered, `fail…` refused, else sent."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def send(self, message: Message) -> Result:
        self.messages.append(message)
        await asyncio.sleep(0)
        if message.address.startswith("dead"):
            return Result(outcome=Outcome.DEAD_ADDRESS, error_code="Unregistered")
        if message.address.startswith("fail"):
            return Result(outcome=Outcome.FAILED, error_code="TopicDisallowed")
        return Result(outcome=Outcome.ACCEPTED, provider_ref=f"ref-{message.key}")

    async def close(self) -> None:
        pass

    def sent_to(self) -> list[str]:
        return [message.address for message in self.messages]


@dataclass
class Setup:
    database: Database
    vault: Vault
    service_id: int
    channel: ScriptedChannel
    clock: Clock

    def worker(self, *, name: str = "worker-a", **config: Any) -> Worker:
        def factory(_credential: Credential) -> ScriptedChannel:
            return self.channel

        return Worker(
            self.database,
            channels=factory,
            vault=self.vault,
            signal=LocalSignal(),
            leader=SoleLeader(),
            config=WorkerConfig(**config),
            clock=self.clock,
            rng=random.Random(7),
            name=name,
        )

    async def register(
        self, identity: str, address: str, *, binding_type: str = "apn", tags: Sequence[str] = ()
    ) -> int:
        def op(conn: Connection) -> int:
            registered = bindings.register(
                conn,
                service_id=self.service_id,
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

        return await self.database.write(op)

    async def notify(
        self,
        *,
        identities: Sequence[str] = (),
        tags: Sequence[str] = (),
        segments: Sequence[str] = (),
        direct: Sequence[tuple[str, str]] = (),
        policy: dict[str, Any] | None = PUSH_THEN_SMS,
        ttl: int = 3600,
    ) -> int:
        def op(conn: Connection) -> int:
            created = notifications.create(
                conn,
                service_id=self.service_id,
                new=NewNotification(
                    targets={
                        "identities": list(identities),
                        "tags": list(tags),
                        "segments": list(segments),
                    },
                    content={"title": "Hi", "body": "Hello there"},
                    priority="high",
                    ttl=ttl,
                    delivery_callback_url=None,
                    direct=[DirectAddress(channel=c, address=a) for c, a in direct],
                    failover=policy,
                ),
            )
            return int(
                conn.scalar(select(notification.c.id).where(notification.c.sid == created.sid))
            )

        return await self.database.write(op)

    async def deliveries(self, notification_id: int) -> dict[str, dict[str, Any]]:
        """The notification's deliveries by address."""

        def op(conn: Connection) -> dict[str, dict[str, Any]]:
            rows = conn.execute(
                select(delivery).where(delivery.c.notification_id == notification_id)
            ).mappings()
            return {row["address"]: dict(row) for row in rows}

        return await self.database.read(op)

    async def chains(self, notification_id: int) -> dict[str, dict[str, Any]]:
        """The notification's failover chains by identity."""

        def op(conn: Connection) -> dict[str, dict[str, Any]]:
            rows = conn.execute(
                select(failover_chain).where(failover_chain.c.notification_id == notification_id)
            ).mappings()
            return {row["identity"]: dict(row) for row in rows}

        return await self.database.read(op)

    async def status(self, notification_id: int) -> str:
        return str(
            await self.database.read(
                lambda conn: conn.scalar(
                    select(notification.c.status).where(notification.c.id == notification_id)
                )
            )
        )

    async def confirm(self, delivery_id: int) -> None:
        await self.database.transaction(
            functools.partial(failover.confirm, delivery_id=delivery_id, now=self.clock())
        )

    async def summary(self, notification_id: int) -> dict[str, Any] | None:
        return await self.database.read(
            functools.partial(failover.summary, notification_id=notification_id)
        )


@pytest.fixture
async def setup(database: Database, vault: Vault) -> AsyncIterator[Setup]:
    """A service with APNs, SMS and Messenger credentials, on a quiet queue (left quiet)."""
    now = utcnow()

    def op(conn: Connection) -> int:
        quiet_the_queue(conn, failover_chains=True)
        service_id, _ = insert_service(
            conn,
            name="failover",
            now=now,
            credentials={
                column: CredentialRow(
                    type_, secret_sealed=vault.seal(json.dumps({"Secret": type_}))
                )
                for column, type_ in (
                    ("apn_credential_id", "apn"),
                    ("sms_credential_id", "twilio-sms"),
                    ("facebook_messenger_credential_id", "facebook-messenger"),
                )
            },
        )
        return service_id

    service_id = await database.transaction(op)
    yield Setup(database, vault, service_id, ScriptedChannel(), Clock())
    await database.transaction(functools.partial(quiet_the_queue, failover_chains=True))


@pytest.fixture
async def worker(setup: Setup) -> AsyncIterator[Worker]:
    worker = setup.worker()
    yield worker
    await worker.stop()


TOKEN = "ab" * 32


async def alice_with_push_and_sms(setup: Setup, push: str = TOKEN) -> None:
    await setup.register("alice", push, tags=["news"])
    await setup.register("alice", PHONE, binding_type="sms")


# --- Sending on the first group ---------------------------------------------------------------


async def test_push_goes_first_and_sms_waits(setup: Setup, worker: Worker) -> None:
    await alice_with_push_and_sms(setup)
    notification_id = await setup.notify(tags=["news"])

    await worker.run_jobs()
    assert await worker.dispatch_once() == 1

    assert setup.channel.sent_to() == [TOKEN]
    push = (await setup.deliveries(notification_id))[TOKEN]
    assert (push["status"], push["failover_step"], push["failover_reason"]) == ("sent", 0, None)
    assert push["failover_of"] is None
    chain = (await setup.chains(notification_id))["alice"]
    assert (chain["step"], chain["status"]) == (0, "waiting")
    assert chain["deadline"] == push["date_created"] + timedelta(seconds=120)
    assert await setup.status(notification_id) == "dispatched"  # not complete while it waits


async def test_later_groups_reach_every_active_binding_of_the_identity_not_only_matching_ones(
    setup: Setup, worker: Worker
) -> None:
    """Tag=news matched alice's phone; failover is about alice, so her iPad gets it too, and
    her untagged number gets the SMS."""
    await setup.register("alice", "dead" + TOKEN[4:], tags=["news"])
    await setup.register("alice", "dead-ipad" + TOKEN[9:])
    await setup.register("alice", PHONE, binding_type="sms")
    await setup.register("bob", "cd" * 32)  # not tagged: not reached at all
    notification_id = await setup.notify(tags=["news"])

    await worker.run_jobs()
    await worker.dispatch_once()  # both push tokens are dead: on to SMS at once
    await worker.dispatch_once()

    assert sorted(setup.channel.sent_to()) == sorted(
        ["dead" + TOKEN[4:], "dead-ipad" + TOKEN[9:], PHONE]
    )
    assert set(await setup.chains(notification_id)) == {"alice"}


async def test_an_identity_without_push_starts_on_sms_with_reason_no_binding(
    setup: Setup, worker: Worker
) -> None:
    await setup.register("alice", PHONE, binding_type="sms", tags=["news"])
    notification_id = await setup.notify(tags=["news"])

    await worker.run_jobs()
    await worker.dispatch_once()

    sms = (await setup.deliveries(notification_id))[PHONE]
    assert (sms["status"], sms["failover_step"], sms["failover_reason"]) == (
        "sent",
        1,
        "no_binding",
    )
    chain = (await setup.chains(notification_id))["alice"]
    assert (chain["step"], chain["status"], chain["reason"]) == (1, "waiting", "no_binding")


async def test_an_identity_with_no_binding_in_any_group_is_exhausted_at_once(
    setup: Setup, worker: Worker
) -> None:
    await setup.register("alice", "alice@example.com", binding_type="email", tags=["news"])
    notification_id = await setup.notify(tags=["news"])

    await worker.run_jobs()

    assert await setup.deliveries(notification_id) == {}
    chain = (await setup.chains(notification_id))["alice"]
    assert (chain["step"], chain["status"], chain["reason"], chain["deadline"]) == (
        2,
        "exhausted",
        "no_binding",
        None,
    )
    assert await setup.status(notification_id) == "completed"


async def test_an_identity_with_no_binding_at_all_gets_no_chain(
    setup: Setup, worker: Worker
) -> None:
    notification_id = await setup.notify(identities=["ghost"])

    await worker.run_jobs()

    assert await setup.chains(notification_id) == {}
    assert await setup.status(notification_id) == "completed"


async def test_a_direct_notification_has_no_failover(setup: Setup, worker: Worker) -> None:
    notification_id = await setup.notify(direct=[("apn", "dead" + TOKEN[4:])])

    await worker.dispatch_once()
    setup.clock.advance(seconds=600)
    await worker.sweep_once()

    (only,) = (await setup.deliveries(notification_id)).values()
    assert (only["status"], only["failover_step"]) == ("failed", None)
    assert await setup.chains(notification_id) == {}
    assert await setup.status(notification_id) == "completed"


async def test_without_a_policy_nothing_changes(setup: Setup, worker: Worker) -> None:
    await alice_with_push_and_sms(setup)
    notification_id = await setup.notify(identities=["alice"], policy=None)

    await worker.run_jobs()
    await worker.dispatch_once()

    assert sorted(setup.channel.sent_to()) == sorted([TOKEN, PHONE])
    assert await setup.chains(notification_id) == {}
    assert await setup.status(notification_id) == "completed"


async def test_identities_spread_over_many_chunks_get_one_chain_each(setup: Setup) -> None:
    worker = setup.worker(fanout_chunk=2)
    for n in range(5):
        await setup.register(f"user-{n}", f"{n:02x}" * 32, tags=["news"])
    for n in range(5):  # registered later: in later chunks than their push bindings
        await setup.register(f"user-{n}", f"+1500555001{n}", binding_type="sms", tags=["news"])
    notification_id = await setup.notify(tags=["news"])
    try:
        await worker.run_jobs()
        chains = await setup.chains(notification_id)
        rows = await setup.deliveries(notification_id)
    finally:
        await worker.stop()

    assert set(chains) == {f"user-{n}" for n in range(5)}
    assert {row["channel"] for row in rows.values()} == {"apn"}
    assert len(rows) == 5


async def test_a_segment_reaches_its_members_as_identities(setup: Setup, worker: Worker) -> None:
    await alice_with_push_and_sms(setup, push="dead" + TOKEN[4:])
    await setup.register("bob", "cd" * 32)

    def join(conn: Connection) -> None:
        users.add_membership(
            conn, service_id=setup.service_id, identity="alice", segment_name="beta"
        )

    await setup.database.write(join)
    notification_id = await setup.notify(segments=["beta"])
    await worker.run_jobs()
    await worker.dispatch_once()
    await worker.dispatch_once()

    assert set(await setup.chains(notification_id)) == {"alice"}
    assert setup.channel.sent_to() == ["dead" + TOKEN[4:], PHONE]


async def test_starting_the_same_chains_again_writes_nothing_twice(
    setup: Setup, worker: Worker
) -> None:
    """A fan-out chunk written again (a crash, an identity whose bindings span chunks) finds
    the chains there and their deliveries written."""
    await alice_with_push_and_sms(setup)
    notification_id = await setup.notify(tags=["news"])
    await worker.run_jobs()
    before = await setup.deliveries(notification_id)

    def again(conn: Connection) -> int:
        return failover.start(
            conn,
            notification_id=notification_id,
            identities=select(binding.c.identity).where(binding.c.service_id == setup.service_id),
            now=setup.clock(),
        )

    assert await setup.database.transaction(again) == 0
    assert await setup.deliveries(notification_id) == before
    assert set(await setup.chains(notification_id)) == {"alice"}


# --- Moving on at once ------------------------------------------------------------------------


async def test_a_dead_token_moves_on_to_sms_at_once(setup: Setup, worker: Worker) -> None:
    dead = "dead" + TOKEN[4:]
    await alice_with_push_and_sms(setup, push=dead)
    notification_id = await setup.notify(tags=["news"])
    await worker.run_jobs()

    await worker.dispatch_once()  # the push fails: the SMS is queued in the same transaction
    rows = await setup.deliveries(notification_id)
    assert rows[dead]["status"] == "failed"
    sms = rows[PHONE]
    assert (sms["status"], sms["failover_step"], sms["failover_reason"]) == (
        "pending",
        1,
        "dead_token",
    )
    assert sms["failover_of"] == rows[dead]["id"]

    await worker.dispatch_once()
    assert setup.channel.sent_to() == [dead, PHONE]
    chain = (await setup.chains(notification_id))["alice"]
    assert (chain["step"], chain["status"], chain["reason"]) == (1, "waiting", "dead_token")


async def test_a_moved_chain_is_due_ahead_of_the_deliveries_already_queued(
    setup: Setup, worker: Worker
) -> None:
    dead = "dead" + TOKEN[4:]
    await alice_with_push_and_sms(setup, push=dead)
    notification_id = await setup.notify(tags=["news"])
    await worker.run_jobs()  # the fan-out queues the push now
    setup.clock.advance(seconds=30)  # it fails half a minute later

    await worker.dispatch_once()

    rows = await setup.deliveries(notification_id)
    # Claims go by due time: due when the notification was made, the SMS goes before whatever
    # the fan-out queued (a 100,000-binding tag, say), not after all of it.
    assert rows[PHONE]["next_attempt_at"] <= rows[dead]["date_created"]


async def test_a_refused_push_moves_on_with_reason_failed(setup: Setup, worker: Worker) -> None:
    refused = "fail" + TOKEN[4:]
    await alice_with_push_and_sms(setup, push=refused)
    notification_id = await setup.notify(tags=["news"])
    await worker.run_jobs()

    await worker.dispatch_once()

    sms = (await setup.deliveries(notification_id))[PHONE]
    assert (sms["failover_step"], sms["failover_reason"]) == (1, "failed")


async def test_one_live_push_binding_holds_the_group(setup: Setup, worker: Worker) -> None:
    await setup.register("alice", "dead" + TOKEN[4:], tags=["news"])
    await setup.register("alice", TOKEN)
    await setup.register("alice", PHONE, binding_type="sms")
    notification_id = await setup.notify(tags=["news"])
    await worker.run_jobs()

    await worker.dispatch_once()

    assert PHONE not in await setup.deliveries(notification_id)
    assert (await setup.chains(notification_id))["alice"]["status"] == "waiting"


async def test_a_failure_on_the_last_group_exhausts_the_chain(setup: Setup, worker: Worker) -> None:
    await setup.register("alice", "dead" + TOKEN[4:], tags=["news"])
    await setup.register("alice", "fail-sms", binding_type="sms")
    notification_id = await setup.notify(tags=["news"])
    await worker.run_jobs()

    await worker.dispatch_once()
    await worker.dispatch_once()

    chain = (await setup.chains(notification_id))["alice"]
    assert (chain["status"], chain["reason"], chain["deadline"]) == ("exhausted", "failed", None)
    await worker.sweep_once()
    assert await setup.status(notification_id) == "completed"


async def test_storing_the_same_failures_again_moves_nothing(setup: Setup, worker: Worker) -> None:
    """A replay (a crash after commit, a second worker) must not skip a group."""
    dead = "dead" + TOKEN[4:]
    await alice_with_push_and_sms(setup, push=dead)
    await setup.register("alice", "1234567890", binding_type="facebook-messenger")
    notification_id = await setup.notify(
        tags=["news"], policy={"channels": ["push", "sms", "messenger"], "wait": 120}
    )
    await worker.run_jobs()
    await worker.dispatch_once()
    failed_push = (await setup.deliveries(notification_id))[dead]["id"]

    moved = await setup.database.transaction(
        functools.partial(failover.after_failures, delivery_ids=[failed_push], now=setup.clock())
    )

    assert moved == 0
    assert (await setup.chains(notification_id))["alice"]["step"] == 1


async def test_two_workers_storing_a_groups_last_failures_at_once_move_it_once(
    setup: Setup, worker: Worker, database_url: str
) -> None:
    """Worker B stores one dead push and has not committed when worker A stores the other:
    A's transaction cannot see B's failure. A waits for the chain B locked, looks again once B
    committed, and moves the chain on: once, with one SMS."""
    await setup.register("alice", "dead-a" + TOKEN[6:], tags=["news"])
    await setup.register("alice", "dead-b" + TOKEN[6:])
    await setup.register("alice", PHONE, binding_type="sms")
    notification_id = await setup.notify(tags=["news"])
    await worker.run_jobs()
    now = setup.clock()
    (a,) = await claim_failing(setup, owner="worker-a", prefix="dead-a", now=now)
    (b,) = await claim_failing(setup, owner="worker-b", prefix="dead-b", now=now)
    other_process = create_async_engine(async_url(database_url))
    try:
        async with other_process.connect() as held:
            await held.begin()
            await held.run_sync(
                functools.partial(
                    queue.complete_deliveries, owner="worker-b", now=now, completions=[b]
                )
            )
            storing_a = asyncio.create_task(
                setup.database.transaction(
                    functools.partial(
                        queue.complete_deliveries, owner="worker-a", now=now, completions=[a]
                    )
                )
            )
            await until_waiting_for_a_lock(held)
            await held.commit()
        await storing_a
    finally:
        await other_process.dispose()

    chain = (await setup.chains(notification_id))["alice"]
    assert (chain["step"], chain["reason"]) == (1, "dead_token")
    sms = (await setup.deliveries(notification_id))[PHONE]
    assert sms["failover_step"] == 1


async def claim_failing(
    setup: Setup, *, owner: str, prefix: str, now: datetime
) -> list[queue.Completion]:
    """Claim for `owner` the pending deliveries to `prefix…` (giving the rest back), and the
    dead-address results a worker would store for them."""

    def op(conn: Connection) -> list[queue.Completion]:
        claimed = queue.claim_deliveries(
            conn, owner=owner, now=now, lease=timedelta(seconds=60), limit=100
        )
        mine = [d for d in claimed.deliveries if d.address.startswith(prefix)]
        others = [d.id for d in claimed.deliveries if not d.address.startswith(prefix)]
        queue.release_deliveries(conn, owner=owner, now=now, ids=others, maybe_sent=False)
        return [
            queue.Completion(
                delivery_id=d.id,
                notification_id=d.notification_id,
                status="failed",
                event="dead_address",
                error_code="Unregistered",
                retire_binding_id=d.binding_id,
            )
            for d in mine
        ]

    return await setup.database.transaction(op)


def async_url(database_url: str) -> str:
    """The test database for an engine of another "process": aiosqlite or asyncpg."""
    if database_url.startswith("sqlite"):
        return database_url.replace("sqlite://", "sqlite+aiosqlite://", 1)
    return engine_url(database_url)


async def until_waiting_for_a_lock(held: AsyncConnection) -> None:
    """Until another PostgreSQL session waits for a lock `held` has. (On SQLite the other
    writer waits for the database lock, and sees every committed row once it has it.)"""
    if held.dialect.name != "postgresql":
        return
    waiting = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    async with asyncio.timeout(10):
        while True:
            if await held.scalar(waiting):
                return
            await asyncio.sleep(0.01)  # polling the server: it has no way to tell us


# --- Moving on when no one confirms -----------------------------------------------------------


async def test_no_confirmation_within_wait_moves_on_to_sms(setup: Setup, worker: Worker) -> None:
    await alice_with_push_and_sms(setup)
    notification_id = await setup.notify(tags=["news"])
    await worker.run_jobs()
    await worker.dispatch_once()

    setup.clock.advance(seconds=119)
    await worker.sweep_once()
    assert PHONE not in await setup.deliveries(notification_id)

    setup.clock.advance(seconds=2)
    await worker.sweep_once()
    await worker.dispatch_once()

    rows = await setup.deliveries(notification_id)
    sms = rows[PHONE]
    assert (sms["status"], sms["failover_step"], sms["failover_reason"]) == (
        "sent",
        1,
        "no_receipt",
    )
    assert sms["failover_of"] == rows[TOKEN]["id"]
    assert setup.channel.sent_to() == [TOKEN, PHONE]

    setup.clock.advance(seconds=121)  # no word from the SMS either: the list has run out
    await worker.sweep_once()
    chain = (await setup.chains(notification_id))["alice"]
    assert (chain["status"], chain["reason"]) == ("exhausted", "no_receipt")
    assert await setup.status(notification_id) == "completed"
    assert setup.channel.sent_to() == [TOKEN, PHONE]


async def test_a_single_group_policy_waits_then_ends(setup: Setup, worker: Worker) -> None:
    await alice_with_push_and_sms(setup)
    notification_id = await setup.notify(
        identities=["alice"], policy={"channels": ["sms"], "wait": 60}
    )
    await worker.run_jobs()
    await worker.dispatch_once()
    assert setup.channel.sent_to() == [PHONE]

    setup.clock.advance(seconds=61)
    await worker.sweep_once()

    chain = (await setup.chains(notification_id))["alice"]
    assert (chain["status"], chain["reason"]) == ("exhausted", "no_receipt")
    assert await worker.dispatch_once() == 0
    assert await setup.status(notification_id) == "completed"


async def test_a_timer_skips_groups_the_identity_has_no_binding_in(
    setup: Setup, worker: Worker
) -> None:
    await alice_with_push_and_sms(setup)
    notification_id = await setup.notify(
        tags=["news"], policy={"channels": ["push", "messenger", "sms"], "wait": 30}
    )
    await worker.run_jobs()
    await worker.dispatch_once()

    setup.clock.advance(seconds=31)
    await worker.sweep_once()

    sms = (await setup.deliveries(notification_id))[PHONE]
    assert (sms["failover_step"], sms["failover_reason"]) == (2, "no_receipt")


async def test_past_its_ttl_a_notification_does_not_fail_over(setup: Setup, worker: Worker) -> None:
    await alice_with_push_and_sms(setup)
    notification_id = await setup.notify(tags=["news"], ttl=60)
    await worker.run_jobs()
    await worker.dispatch_once()

    setup.clock.advance(seconds=121)
    await worker.sweep_once()

    assert PHONE not in await setup.deliveries(notification_id)
    assert (await setup.chains(notification_id))["alice"]["status"] == "exhausted"


async def test_a_new_worker_fires_the_timers_of_one_that_stopped(setup: Setup) -> None:
    first = setup.worker(name="worker-a")
    await alice_with_push_and_sms(setup)
    notification_id = await setup.notify(tags=["news"])
    await first.run_jobs()
    await first.dispatch_once()
    await first.stop()

    setup.clock.advance(seconds=300)
    second = setup.worker(name="worker-b")
    try:
        await second.sweep_once()
        await second.dispatch_once()
    finally:
        await second.stop()

    assert setup.channel.sent_to() == [TOKEN, PHONE]
    assert (await setup.deliveries(notification_id))[PHONE]["status"] == "sent"


# --- Confirmations ----------------------------------------------------------------------------


async def test_a_confirmation_before_the_deadline_stops_the_chain(
    setup: Setup, worker: Worker
) -> None:
    await alice_with_push_and_sms(setup)
    notification_id = await setup.notify(tags=["news"])
    await worker.run_jobs()
    await worker.dispatch_once()

    await setup.confirm((await setup.deliveries(notification_id))[TOKEN]["id"])
    setup.clock.advance(seconds=600)
    await worker.sweep_once()

    assert PHONE not in await setup.deliveries(notification_id)
    chain = (await setup.chains(notification_id))["alice"]
    assert (chain["status"], chain["confirmed_step"], chain["deadline"]) == ("confirmed", 0, None)
    assert await setup.status(notification_id) == "completed"


async def test_an_sms_delivered_report_confirms_the_chain(setup: Setup, worker: Worker) -> None:
    """Twilio's `delivered` status callback is a sign of life, like an app's receipt."""
    await setup.register("alice", PHONE, binding_type="sms", tags=["news"])
    notification_id = await setup.notify(tags=["news"])
    await worker.run_jobs()
    await worker.dispatch_once()
    sms = (await setup.deliveries(notification_id))[PHONE]

    await setup.database.write(
        lambda conn: deliveries.record_provider_report(
            conn,
            account_id=None,
            channel="sms",
            provider_ref=sms["provider_ref"],
            status="delivered",
            error_code=None,
            error_message=None,
            now=setup.clock(),
        )
    )

    chain = (await setup.chains(notification_id))["alice"]
    assert (chain["status"], chain["confirmed_step"]) == ("confirmed", 1)


async def test_an_sms_failed_report_moves_on_at_once(setup: Setup, worker: Worker) -> None:
    """The carrier gave up on an SMS it had taken: the next group goes now, not after `wait`."""
    await setup.register("alice", PHONE, binding_type="sms", tags=["news"])
    await setup.register("alice", "1234567890", binding_type="facebook-messenger")
    notification_id = await setup.notify(
        tags=["news"], policy={"channels": ["sms", "messenger"], "wait": 120}
    )
    await worker.run_jobs()
    await worker.dispatch_once()
    sms = (await setup.deliveries(notification_id))[PHONE]

    await setup.database.write(
        lambda conn: deliveries.record_provider_report(
            conn,
            account_id=None,
            channel="sms",
            provider_ref=sms["provider_ref"],
            status="failed",
            error_code="30003",
            error_message="Unreachable destination handset",
            now=setup.clock(),
        )
    )

    messenger = (await setup.deliveries(notification_id))["1234567890"]
    assert (messenger["failover_step"], messenger["failover_reason"]) == (1, "failed")
    assert messenger["failover_of"] == sms["id"]


async def test_a_late_confirmation_is_recorded_and_stops_what_is_left(
    setup: Setup, worker: Worker
) -> None:
    await alice_with_push_and_sms(setup)
    await setup.register("alice", "1234567890", binding_type="facebook-messenger")
    notification_id = await setup.notify(
        tags=["news"], policy={"channels": ["push", "sms", "messenger"], "wait": 120}
    )
    await worker.run_jobs()
    await worker.dispatch_once()
    setup.clock.advance(seconds=121)
    await worker.sweep_once()  # SMS queued
    await worker.dispatch_once()

    await setup.confirm((await setup.deliveries(notification_id))[TOKEN]["id"])
    setup.clock.advance(seconds=600)
    await worker.sweep_once()

    rows = await setup.deliveries(notification_id)
    assert rows[PHONE]["status"] == "sent"  # not undone
    assert "1234567890" not in rows  # nothing more
    chain = (await setup.chains(notification_id))["alice"]
    assert (chain["status"], chain["step"], chain["confirmed_step"]) == ("confirmed", 1, 0)


async def test_a_confirmation_after_the_list_ran_out_still_counts(
    setup: Setup, worker: Worker
) -> None:
    await alice_with_push_and_sms(setup)
    notification_id = await setup.notify(
        identities=["alice"], policy={"channels": ["sms"], "wait": 120}
    )
    await worker.run_jobs()
    await worker.dispatch_once()
    setup.clock.advance(seconds=121)
    await worker.sweep_once()

    await setup.confirm((await setup.deliveries(notification_id))[PHONE]["id"])

    chain = (await setup.chains(notification_id))["alice"]
    assert (chain["status"], chain["confirmed_step"]) == ("confirmed", 0)


async def test_confirming_a_delivery_without_failover_does_nothing(
    setup: Setup, worker: Worker
) -> None:
    notification_id = await setup.notify(direct=[("apn", TOKEN)])
    await worker.dispatch_once()

    await setup.confirm((await setup.deliveries(notification_id))[TOKEN]["id"])

    assert await setup.chains(notification_id) == {}


THREE_GROUPS = {"channels": ["push", "sms", "messenger"], "wait": 120}


async def racing_setup(setup: Setup, worker: Worker) -> tuple[int, int]:
    """Alice's push sent, its wait run out: the notification and the push delivery's id."""
    await alice_with_push_and_sms(setup)
    await setup.register("alice", "1234567890", binding_type="facebook-messenger")
    notification_id = await setup.notify(tags=["news"], policy=THREE_GROUPS)
    await worker.run_jobs()
    await worker.dispatch_once()
    setup.clock.advance(seconds=121)
    return notification_id, (await setup.deliveries(notification_id))[TOKEN]["id"]


async def test_a_timer_that_commits_first_wins_the_race_with_a_receipt(
    setup: Setup, worker: Worker, database_url: str
) -> None:
    """The timer has moved alice on to SMS, not yet committed, when her push's receipt comes:
    the receipt waits for it, then counts as late. One SMS; nothing after it."""
    notification_id, push = await racing_setup(setup, worker)
    timer = create_async_engine(async_url(database_url))
    try:
        async with timer.connect() as held:
            await held.begin()
            await held.run_sync(functools.partial(failover.fire_due, now=setup.clock()))
            receipt = asyncio.create_task(setup.confirm(push))
            await until_waiting_for_a_lock(held)
            await held.commit()
        await receipt
    finally:
        await timer.dispose()

    chain = (await setup.chains(notification_id))["alice"]
    assert (chain["status"], chain["step"], chain["confirmed_step"]) == ("confirmed", 1, 0)
    setup.clock.advance(seconds=600)
    await worker.sweep_once()
    rows = await setup.deliveries(notification_id)
    assert PHONE in rows
    assert "1234567890" not in rows


async def test_a_receipt_that_commits_first_wins_the_race_with_the_timer(
    setup: Setup, worker: Worker, database_url: str
) -> None:
    """The receipt has stopped alice's chain, not yet committed, when the timer polls: the
    timer passes it by (PostgreSQL skips the locked row; SQLite waits for the receipt's
    commit and then sees it). No SMS, ever."""
    notification_id, push = await racing_setup(setup, worker)
    receipt = create_async_engine(async_url(database_url))
    try:
        async with receipt.connect() as held:
            await held.begin()
            await held.run_sync(
                functools.partial(failover.confirm, delivery_id=push, now=setup.clock())
            )
            timer = asyncio.create_task(worker.sweep_once())
            if held.dialect.name == "postgresql":
                async with asyncio.timeout(10):  # never waits for the receipt's row
                    await timer
            await held.commit()
        await timer
    finally:
        await receipt.dispose()

    await worker.sweep_once()
    assert PHONE not in await setup.deliveries(notification_id)
    chain = (await setup.chains(notification_id))["alice"]
    assert (chain["status"], chain["step"], chain["confirmed_step"]) == ("confirmed", 0, 0)


# --- What the notification shows -------------------------------------------------------------


async def test_the_summary_counts_identities_per_group(setup: Setup, worker: Worker) -> None:
    await alice_with_push_and_sms(setup)
    await setup.register("bob", "dead" + TOKEN[4:], tags=["news"])
    await setup.register("bob", "+15005550007", binding_type="sms")
    await setup.register("carol", "carol@example.com", binding_type="email", tags=["news"])
    notification_id = await setup.notify(tags=["news"])
    await worker.run_jobs()
    await worker.dispatch_once()
    await worker.dispatch_once()
    await setup.confirm((await setup.deliveries(notification_id))[TOKEN]["id"])

    assert await setup.summary(notification_id) == {
        "channels": ["push", "sms"],
        "wait": 120,
        "identities": {
            "total": 3,
            "waiting": 1,
            "confirmed": 1,
            "exhausted": 1,
            "by_channel": {
                "push": {"reached": 1, "confirmed": 1},
                "sms": {"reached": 1, "confirmed": 0},
            },
        },
    }


async def test_a_notification_without_policy_has_no_summary(setup: Setup, worker: Worker) -> None:
    notification_id = await setup.notify(direct=[("apn", TOKEN)], policy=None)

    assert await setup.summary(notification_id) is None
