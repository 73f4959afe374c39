"""The worker end to end against the database: fan-out, send, results, wake-ups, stop.

The provider is a scripted in-test `Channel` (answers by address prefix, records what it was
given): these tests are about the engine, and the real adapters have their own tests against
the emulators. Time is a test clock unless a test runs the worker's own loops.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, select, update

from clarion.channels.base import Message, Outcome, Result
from clarion.delivery import payloads
from clarion.delivery.breaker import THRESHOLD
from clarion.delivery.channel_pool import Credential
from clarion.delivery.receipts import ReceiptTokens
from clarion.delivery.wakeup import (
    LocalSignal,
    PostgresLeader,
    PostgresSignal,
    SoleLeader,
    WorkSignal,
    asyncpg_dsn,
)
from clarion.delivery.worker import Worker, WorkerConfig
from clarion.store import bindings, notifications, queue
from clarion.store import deliveries as store_deliveries
from clarion.store.bindings import Registration
from clarion.store.clock import utcnow
from clarion.store.database import Database
from clarion.store.notifications import DirectAddress, NewNotification
from clarion.store.tables import (
    binding,
    credential,
    delivery,
    notification,
    service,
)
from clarion.vault import Vault
from support import Clock, CredentialRow, insert_service, quiet_the_queue

TOKEN = "7e57" * 16  # "test"; other suites use their own tokens


class ScriptedChannel:
    """A provider double. Addresses script the answer: `dead…` unregistered, `fail…` refused,
    `retry…` throttled on the first attempt, `down…` unavailable every time, `slow…` answered
    once `gate` opens; anything else is accepted."""

    def __init__(self, *, expected: int = 0) -> None:
        self.messages: list[Message] = []
        self.gate = asyncio.Event()
        self.slow_started = asyncio.Event()
        self.all_sent = asyncio.Event()
        self.expected = expected
        self.closed = False

    async def send(self, message: Message) -> Result:
        self.messages.append(message)
        if len(self.messages) >= self.expected:
            self.all_sent.set()
        address = message.address
        if address.startswith("slow"):
            self.slow_started.set()
            await self.gate.wait()
        await asyncio.sleep(0)  # a real send yields to the other sends in flight
        if address.startswith("dead"):
            return Result(
                outcome=Outcome.DEAD_ADDRESS,
                error_code="Unregistered",
                error_message="The device token is inactive for the specified topic",
            )
        if address.startswith("fail"):
            return Result(outcome=Outcome.FAILED, error_code="TopicDisallowed")
        if address.startswith("down"):
            return Result(outcome=Outcome.RETRY, error_code="ServiceUnavailable")
        if address.startswith("retry") and self.sent_to(address) == 1:
            return Result(outcome=Outcome.RETRY, retry_after=30, error_code="TooManyRequests")
        return Result(outcome=Outcome.ACCEPTED, provider_ref=f"ref-{message.key}")

    async def close(self) -> None:
        self.closed = True

    def sent_to(self, address: str) -> int:
        return sum(1 for message in self.messages if message.address == address)


@dataclass
class Setup:
    database: Database
    vault: Vault
    service_id: int
    credentials: dict[str, int]
    channel: ScriptedChannel
    built: list[Credential]
    clock: Clock

    def worker(
        self,
        *,
        database: Database | None = None,
        signal: WorkSignal | None = None,
        clock: Callable[[], datetime] | None = None,
        name: str = "worker-a",
        **config: Any,
    ) -> Worker:
        def factory(credential: Credential) -> ScriptedChannel:
            self.built.append(credential)
            return self.channel

        return Worker(
            database or self.database,
            channels=factory,
            vault=self.vault,
            signal=signal or LocalSignal(),
            leader=SoleLeader(),
            config=WorkerConfig(**config),
            clock=clock or self.clock,
            rng=random.Random(7),
            name=name,
        )


@pytest.fixture
async def setup(database: Database, vault: Vault) -> Setup:
    """A service with APNs and SMS credentials; the queue is emptied of other tests' work."""
    now = utcnow()

    def op(conn: Connection) -> tuple[int, dict[str, int]]:
        quiet_the_queue(conn)
        return insert_service(
            conn,
            name="worker",
            now=now,
            credentials={
                column: CredentialRow(
                    type_,
                    settings={"KeyId": "ABCDEFGHIJ"},
                    secret_sealed=vault.seal(json.dumps({"PrivateKey": "secret-of-" + type_})),
                )
                for column, type_ in (
                    ("apn_credential_id", "apn"),
                    ("sms_credential_id", "twilio-sms"),
                )
            },
        )

    service_id, credentials = await database.transaction(op)
    return Setup(database, vault, service_id, credentials, ScriptedChannel(), [], Clock())


@pytest.fixture
async def worker(setup: Setup) -> AsyncIterator[Worker]:
    worker = setup.worker()
    yield worker
    await worker.stop()


async def register(setup: Setup, address: str, *, binding_type: str = "apn") -> int:
    def op(conn: Connection) -> int:
        registered = bindings.register(
            conn,
            service_id=setup.service_id,
            reg=Registration(
                identity=f"user-{address}",
                binding_type=binding_type,
                address=address,
                tags=["news"],
                notification_protocol_version="3",
                credential_id=None,
                endpoint=None,
            ),
        )
        return int(registered["id"])

    return await setup.database.write(op)


async def notify(
    setup: Setup,
    *,
    tags: Sequence[str] = (),
    direct: Sequence[tuple[str, str]] = (),
    content: dict[str, Any] | None = None,
    ttl: int = 3600,
) -> int:
    def op(conn: Connection) -> int:
        created = notifications.create(
            conn,
            service_id=setup.service_id,
            new=NewNotification(
                targets={"identities": [], "tags": list(tags), "segments": []},
                content=content or {"title": "Hi", "body": "Hello there"},
                priority="high",
                ttl=ttl,
                delivery_callback_url=None,
                direct=[DirectAddress(channel=c, address=a) for c, a in direct],
            ),
        )
        return int(conn.scalar(select(notification.c.id).where(notification.c.sid == created.sid)))

    return await setup.database.write(op)


async def deliveries_of(database: Database, notification_id: int) -> dict[str, dict[str, Any]]:
    """The notification's deliveries by address."""

    def op(conn: Connection) -> dict[str, dict[str, Any]]:
        rows = conn.execute(
            select(delivery).where(delivery.c.notification_id == notification_id)
        ).mappings()
        return {row["address"]: dict(row) for row in rows}

    return await database.read(op)


async def events_of(database: Database, delivery_id: int) -> list[tuple[str, Any]]:
    """The delivery's history as the API and the portal show it."""

    def op(conn: Connection) -> list[tuple[str, Any]]:
        return [
            (event["kind"], event["detail"])
            for event in store_deliveries.events(conn, delivery_id=delivery_id)
        ]

    return await database.read(op)


async def status_of(database: Database, notification_id: int) -> str:
    def op(conn: Connection) -> str:
        return str(
            conn.scalar(select(notification.c.status).where(notification.c.id == notification_id))
        )

    return await database.read(op)


# ---------------------------------------------------------------------------------------------


async def test_a_tag_notification_is_fanned_out_sent_and_completed(
    setup: Setup, worker: Worker
) -> None:
    for n in range(5):
        await register(setup, f"{n:02x}" * 32)
    notification_id = await notify(setup, tags=["news"])

    assert await worker.run_jobs() == 1
    assert await worker.dispatch_once() == 5

    rows = await deliveries_of(setup.database, notification_id)
    assert {row["status"] for row in rows.values()} == {"sent"}
    assert {m.address for m in setup.channel.messages} == set(rows)
    message = setup.channel.messages[0]
    row = rows[message.address]
    receipt = ReceiptTokens(setup.vault).mint(row["id"])
    assert message.payload == payloads.build(
        "apn", {"title": "Hi", "body": "Hello there"}, receipt=receipt
    )
    assert message.priority == "high"
    expires_at = await setup.database.read(
        lambda conn: conn.scalar(
            select(notification.c.expires_at).where(notification.c.id == notification_id)
        )
    )
    assert message.expires_at == expires_at
    assert row["provider_ref"] == f"ref-{message.key}"
    assert (row["attempts"], row["lease_owner"]) == (1, None)
    assert await events_of(setup.database, row["id"]) == [
        ("sent", {"attempt": 1, "provider_ref": row["provider_ref"]})
    ]
    assert await status_of(setup.database, notification_id) == "completed"


async def test_the_factory_gets_the_credential_with_its_secret_opened_once(
    setup: Setup, worker: Worker
) -> None:
    await notify(setup, direct=[("apn", TOKEN), ("apn", "cd" * 32)])

    await worker.dispatch_once()

    (built,) = setup.built
    assert built.id == setup.credentials["apn_credential_id"]
    assert (built.type, built.settings) == ("apn", {"KeyId": "ABCDEFGHIJ"})
    assert built.secret == {"PrivateKey": "secret-of-apn"}


async def test_an_edited_credential_gets_a_new_channel(setup: Setup) -> None:
    worker = setup.worker(credential_refresh=0)
    await notify(setup, direct=[("apn", TOKEN)])
    await worker.dispatch_once()

    def rotate(conn: Connection) -> None:
        conn.execute(
            update(credential)
            .where(credential.c.id == setup.credentials["apn_credential_id"])
            .values(
                secret_sealed=setup.vault.seal(json.dumps({"PrivateKey": "rotated"})),
                date_updated=utcnow() + timedelta(seconds=1),
            )
        )

    await setup.database.transaction(rotate)
    await notify(setup, direct=[("apn", TOKEN)])
    await worker.dispatch_once()
    await worker.stop()

    assert [c.secret for c in setup.built] == [
        {"PrivateKey": "secret-of-apn"},
        {"PrivateKey": "rotated"},
    ]
    assert setup.channel.closed


async def test_a_dead_address_fails_and_retires_its_binding(setup: Setup, worker: Worker) -> None:
    binding_id = await register(setup, "dead" + TOKEN[4:])
    await register(setup, TOKEN)
    first = await notify(setup, tags=["news"])
    await worker.run_jobs()
    await worker.dispatch_once()

    dead = (await deliveries_of(setup.database, first))["dead" + TOKEN[4:]]
    assert (dead["status"], dead["error_code"]) == ("failed", "Unregistered")

    def read_binding(conn: Connection) -> Any:
        return conn.execute(select(binding).where(binding.c.id == binding_id)).mappings().one()

    retired = await setup.database.read(read_binding)
    assert retired["inactive_since"] <= setup.clock()
    assert retired["inactive_reason"].startswith("Unregistered: ")

    second = await notify(setup, tags=["news"])
    await worker.run_jobs()
    assert set(await deliveries_of(setup.database, second)) == {TOKEN}


async def test_a_throttled_send_is_retried_later_with_the_same_key(
    setup: Setup, worker: Worker
) -> None:
    address = "retry" + TOKEN[5:]
    notification_id = await notify(setup, direct=[("apn", address)])

    await worker.dispatch_once()
    row = (await deliveries_of(setup.database, notification_id))[address]
    assert (row["status"], row["error_code"]) == ("pending", "TooManyRequests")
    assert row["next_attempt_at"] >= row["date_updated"] + timedelta(seconds=30)  # Retry-After

    assert await worker.dispatch_once() == 0  # not due yet
    setup.clock.advance(seconds=60)
    assert await worker.dispatch_once() == 1

    row = (await deliveries_of(setup.database, notification_id))[address]
    assert (row["status"], row["attempts"]) == ("sent", 2)
    first, second = setup.channel.messages
    assert first.key == second.key
    assert str(uuid.UUID(first.key)) == first.key  # APNs wants a UUID for apns-id
    assert [kind for kind, _ in await events_of(setup.database, row["id"])] == ["retry", "sent"]
    assert await status_of(setup.database, notification_id) == "completed"


async def test_an_outage_opens_the_breaker_and_holds_deliveries_without_using_attempts(
    setup: Setup, worker: Worker
) -> None:
    addresses = [f"down{n:02d}" + TOKEN[6:] for n in range(THRESHOLD + 5)]
    notification_id = await notify(setup, direct=[("apn", a) for a in addresses])
    await worker.dispatch_once()  # every send fails: the breaker opens
    assert len(setup.channel.messages) == len(addresses)

    setup.clock.advance(minutes=20)  # every retry is due, and the breaker may probe
    await worker.dispatch_once()

    assert len(setup.channel.messages) == len(addresses) + 1  # one probe, the rest held
    rows = (await deliveries_of(setup.database, notification_id)).values()
    assert all(row["status"] == "pending" for row in rows)
    attempts = sorted(row["attempts"] for row in rows)
    assert attempts == [1] * (len(addresses) - 1) + [2]  # held ones gave their attempt back
    for row in rows:
        if row["attempts"] == 1:
            events = await events_of(setup.database, row["id"])
            assert [kind for kind, _ in events] == ["retry", "held"]


async def test_a_retry_that_cannot_happen_before_the_ttl_expires_the_delivery(
    setup: Setup, worker: Worker
) -> None:
    address = "retry" + TOKEN[5:]
    notification_id = await notify(setup, direct=[("apn", address)], ttl=20)

    await worker.dispatch_once()

    row = (await deliveries_of(setup.database, notification_id))[address]
    assert (row["status"], row["error_code"]) == ("expired", "TooManyRequests")


async def test_past_its_ttl_a_delivery_expires_and_is_never_sent(
    setup: Setup, worker: Worker
) -> None:
    notification_id = await notify(setup, direct=[("apn", TOKEN)], ttl=60)
    setup.clock.advance(seconds=61)

    assert await worker.dispatch_once() == 1

    row = (await deliveries_of(setup.database, notification_id))[TOKEN]
    assert row["status"] == "expired"
    assert setup.channel.messages == []
    assert await status_of(setup.database, notification_id) == "completed"


async def limit_rate(setup: Setup, per_second: str) -> None:
    """Give the service's APNs credential a `RateLimit` setting."""
    credential_id = setup.credentials["apn_credential_id"]
    await setup.database.write(
        lambda conn: conn.execute(
            update(credential)
            .where(credential.c.id == credential_id)
            .values(settings={"KeyId": "ABCDEFGHIJ", "RateLimit": per_second})
        )
    )


async def test_a_rate_limited_credential_sends_once_per_slot_and_holds_the_rest(
    setup: Setup, worker: Worker
) -> None:
    await limit_rate(setup, "2")
    addresses = [f"{n:064x}" for n in range(5)]
    notification_id = await notify(setup, direct=[("apn", a) for a in addresses])

    await worker.dispatch_once()

    assert len(setup.channel.messages) == 1  # the first slot is now; the next is 0.5 s away
    rows = sorted(
        (await deliveries_of(setup.database, notification_id)).values(),
        key=lambda row: row["next_attempt_at"],
    )
    held = [row for row in rows if row["status"] == "pending"]
    assert len(held) == 4
    assert all(row["attempts"] == 0 and row["slot_reserved"] for row in held)
    gaps = [b["next_attempt_at"] - a["next_attempt_at"] for a, b in itertools.pairwise(held)]
    assert gaps == [timedelta(seconds=0.5)] * 3
    assert [kind for kind, _ in await events_of(setup.database, held[0]["id"])] == ["throttled"]

    setup.clock.advance(seconds=1)
    assert await worker.dispatch_once() == 2  # the slots at +0.5 s and +1 s, not reserved again
    assert len(setup.channel.messages) == 3
    setup.clock.advance(seconds=1)
    assert await worker.dispatch_once() == 2

    rows = list((await deliveries_of(setup.database, notification_id)).values())
    assert sorted(m.address for m in setup.channel.messages) == addresses
    assert {(row["status"], row["attempts"], row["slot_reserved"]) for row in rows} == {
        ("sent", 1, False)
    }
    assert [kind for kind, _ in await events_of(setup.database, held[-1]["id"])] == [
        "throttled",
        "sent",
    ]


async def test_workers_share_a_credentials_rate_limit(setup: Setup, database_url: str) -> None:
    await limit_rate(setup, "2")
    notification_id = await notify(setup, direct=[("apn", f"{n:064x}") for n in range(6)])
    second_process = Database(database_url)
    first = setup.worker(name="worker-a", batch_size=3)
    second = setup.worker(name="worker-b", database=second_process, batch_size=3)
    try:
        assert await first.dispatch_once() == 3
        assert await second.dispatch_once() == 3
    finally:
        await first.stop()
        await second.stop()
        await second_process.close()

    assert len(setup.channel.messages) == 1  # one slot was due; the other worker's came later
    rows = (await deliveries_of(setup.database, notification_id)).values()
    slots = sorted(row["next_attempt_at"] for row in rows if row["status"] == "pending")
    assert len(slots) == 5
    assert {b - a for a, b in itertools.pairwise(slots)} == {timedelta(seconds=0.5)}


async def test_a_rate_limit_slot_after_the_ttl_expires_the_delivery_unsent(
    setup: Setup, worker: Worker
) -> None:
    await limit_rate(setup, "0.01")  # one message every 100 s
    first, second = f"{1:064x}", f"{2:064x}"
    notification_id = await notify(setup, direct=[("apn", first), ("apn", second)], ttl=60)

    await worker.dispatch_once()

    rows = await deliveries_of(setup.database, notification_id)
    assert sorted(row["status"] for row in rows.values()) == ["expired", "sent"]
    sent = next(address for address, row in rows.items() if row["status"] == "sent")
    assert [m.address for m in setup.channel.messages] == [sent]
    expired = rows[first if sent == second else second]
    assert (expired["attempts"], expired["error_code"]) == (1, None)
    assert "RateLimit (0.01/s)" in expired["error_message"]


async def test_the_sweeper_expires_overdue_deliveries_without_claiming_them(
    setup: Setup, worker: Worker
) -> None:
    notification_id = await notify(setup, direct=[("apn", TOKEN)], ttl=60)
    setup.clock.advance(seconds=61)

    await worker.sweep_once()

    assert (await deliveries_of(setup.database, notification_id))[TOKEN]["status"] == "expired"
    assert await worker.dispatch_once() == 0
    assert setup.channel.messages == []


async def test_a_channel_without_credential_fails_with_the_notify_code(
    setup: Setup, worker: Worker
) -> None:
    def drop_credentials(conn: Connection) -> None:
        conn.execute(
            update(service)
            .where(service.c.id == setup.service_id)
            .values(apn_credential_id=None, sms_credential_id=None)
        )

    await setup.database.transaction(drop_credentials)
    notification_id = await notify(setup, direct=[("apn", TOKEN), ("sms", "+15005550006")])

    await worker.dispatch_once()

    rows = await deliveries_of(setup.database, notification_id)
    assert (rows[TOKEN]["status"], rows[TOKEN]["error_code"]) == ("failed", "52002")
    assert (rows["+15005550006"]["status"], rows["+15005550006"]["error_code"]) == (
        "failed",
        "52182",
    )
    assert setup.channel.messages == []


async def test_content_a_channel_cannot_carry_fails_without_sending(
    setup: Setup, worker: Worker
) -> None:
    notification_id = await notify(
        setup, direct=[("sms", "+15005550006")], content={"title": "No body"}
    )

    await worker.dispatch_once()

    row = (await deliveries_of(setup.database, notification_id))["+15005550006"]
    assert (row["status"], row["error_code"]) == ("failed", str(payloads.SMS_BODY_REQUIRED))
    assert setup.channel.messages == []


async def test_a_refused_send_fails_with_the_providers_code(setup: Setup, worker: Worker) -> None:
    address = "fail" + TOKEN[4:]
    notification_id = await notify(setup, direct=[("apn", address)])

    await worker.dispatch_once()

    row = (await deliveries_of(setup.database, notification_id))[address]
    assert (row["status"], row["error_code"], row["attempts"]) == ("failed", "TopicDisallowed", 1)


async def test_a_delivery_whose_worker_died_is_sent_again_marked_ambiguous(
    setup: Setup, worker: Worker
) -> None:
    notification_id = await notify(setup, direct=[("apn", TOKEN)])
    await setup.database.transaction(
        lambda conn: queue.claim_deliveries(
            conn, owner="killed-worker", now=setup.clock(), lease=timedelta(seconds=60), limit=10
        )
    )
    assert await worker.dispatch_once() == 0

    setup.clock.advance(seconds=61)
    swept = await worker.sweep_once()
    assert swept.deliveries == 1
    assert await worker.dispatch_once() == 1

    row = (await deliveries_of(setup.database, notification_id))[TOKEN]
    assert (row["status"], row["attempts"], row["ambiguous"]) == ("sent", 2, True)
    assert await events_of(setup.database, row["id"]) == [
        ("lease_expired", None),
        ("sent", {"attempt": 2, "ambiguous": True, "provider_ref": row["provider_ref"]}),
    ]


async def test_a_notify_wakes_an_idle_worker_at_once(setup: Setup) -> None:
    signal = LocalSignal()
    setup.channel.expected = 1
    worker = setup.worker(signal=signal, clock=utcnow, poll_min=3600, poll_max=3600)
    await worker.start()
    try:
        await asyncio.sleep(0.05)  # both claim loops have found nothing and gone idle
        await notify(setup, direct=[("apn", TOKEN)])
        signal.notify()
        await asyncio.wait_for(setup.channel.all_sent.wait(), 10)
    finally:
        await worker.stop()


async def test_two_workers_share_a_thousand_deliveries_and_send_none_twice(
    setup: Setup, database_url: str
) -> None:
    addresses = [f"{n:064x}" for n in range(1000)]
    setup.channel.expected = len(addresses)
    notification_id = await notify(setup, direct=[("apn", a) for a in addresses])
    second_process = Database(database_url)
    first = setup.worker(name="worker-a", clock=utcnow, batch_size=50, max_in_flight=100)
    second = setup.worker(
        name="worker-b", database=second_process, clock=utcnow, batch_size=50, max_in_flight=100
    )
    try:
        await first.start()
        await second.start()
        await asyncio.wait_for(setup.channel.all_sent.wait(), 30)
    finally:
        await first.stop()
        await second.stop()
        await second_process.close()

    sent = [message.address for message in setup.channel.messages]
    assert sorted(sent) == addresses
    rows = await deliveries_of(setup.database, notification_id)
    assert {row["status"] for row in rows.values()} == {"sent"}
    assert {row["attempts"] for row in rows.values()} == {1}
    assert {row["lease_owner"] for row in rows.values()} == {None}
    assert await status_of(setup.database, notification_id) == "completed"


async def test_stop_lets_sends_in_flight_finish_and_stores_them(setup: Setup) -> None:
    address = "slow" + TOKEN[4:]
    notification_id = await notify(setup, direct=[("apn", address)])
    worker = setup.worker(clock=utcnow)
    await worker.start()
    await asyncio.wait_for(setup.channel.slow_started.wait(), 10)

    stopping = asyncio.create_task(worker.stop())
    await asyncio.sleep(0.05)
    assert not stopping.done()  # waiting for the send
    setup.channel.gate.set()
    await stopping

    row = (await deliveries_of(setup.database, notification_id))[address]
    assert (row["status"], row["lease_owner"]) == ("sent", None)
    assert setup.channel.closed


async def test_stop_hands_back_sends_that_outlast_it_as_ambiguous(setup: Setup) -> None:
    address = "slow" + TOKEN[4:]
    notification_id = await notify(setup, direct=[("apn", address)])
    worker = setup.worker(clock=utcnow, stop_timeout=0.1)
    await worker.start()
    await asyncio.wait_for(setup.channel.slow_started.wait(), 10)

    await worker.stop()

    row = (await deliveries_of(setup.database, notification_id))[address]
    assert (row["status"], row["ambiguous"], row["lease_owner"]) == ("pending", True, None)
    assert [kind for kind, _ in await events_of(setup.database, row["id"])] == ["interrupted"]


async def test_postgres_notify_wakes_workers_in_other_processes(postgres_url: str) -> None:
    api = PostgresSignal(asyncpg_dsn(postgres_url), listen=False)
    worker = PostgresSignal(asyncpg_dsn(postgres_url), listen=True)
    woken = worker.subscribe()
    await api.start()
    await worker.start()
    try:
        # Until the LISTEN is in place a NOTIFY can go unheard, which polling covers; repeat.
        async with asyncio.timeout(10):
            while not woken.is_set():
                api.notify()
                await asyncio.sleep(0.05)
    finally:
        await api.stop()
        await worker.stop()


async def test_one_postgres_worker_leads_until_it_goes(postgres_url: str) -> None:
    first, second = (
        PostgresLeader(asyncpg_dsn(postgres_url)),
        PostgresLeader(asyncpg_dsn(postgres_url)),
    )
    try:
        assert await first.acquire()
        assert not await second.acquire()
        assert await first.acquire()
        await first.close()
        assert await second.acquire()
    finally:
        await first.close()
        await second.close()
