"""Delivery callbacks: a finished notification is reported to the application's URL the way
Twilio Notify reports it, signed, in batches of 1000, durably and with retries.

Notifications go through the API; the worker, driven one step at a time with a test clock,
sends them through an accepting in-test channel and posts the callbacks to a real HTTP server
standing in for the application.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
from aiohttp import web
from multidict import MultiDictProxy
from sqlalchemy import Connection, select
from twilio.request_validator import RequestValidator

from clarion.channels.base import Channel, Message, Outcome, Result
from clarion.delivery import retry
from clarion.delivery.callbacks import EXCERPT_BYTES, DeliveryCallbacks
from clarion.delivery.channel_pool import Credential
from clarion.delivery.wakeup import LocalSignal, SoleLeader
from clarion.delivery.worker import Worker, WorkerConfig
from clarion.store import callbacks, queue
from clarion.store.clock import utcnow
from clarion.store.database import Database
from clarion.store.tables import job, notification
from clarion.vault import Vault
from support import Account, Clock, closed_port, quiet_the_queue

LEASE = timedelta(seconds=60)
# Short enough that an endpoint which never answers costs the suite little.
CALLBACK_TIMEOUT = 0.2
# The server's answer that is no answer: the request is held until the test ends.
SILENCE = 0


@dataclass
class Received:
    url: str
    signature: str
    form: MultiDictProxy[Any]

    @property
    def sequence(self) -> int:
        return int(self.form["SequenceId"])

    def states(self) -> list[dict[str, Any]]:
        return [json.loads(value) for value in self.form.getall("DeliveryState", [])]


class Application:
    """The application's callback endpoint: records every POST, answers as each path's script
    says (HTTP statuses, or SILENCE), then 200."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.scripts: dict[str, list[int]] = {}
        # The body a path answers with, if not the empty one.
        self.bodies: dict[str, bytes] = {}
        self.arrived = asyncio.Event()
        self._silence_ends = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.base = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{path:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        self._silence_ends.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str) -> str:
        return self.base + path

    def at(self, path: str) -> list[Received]:
        return [item for item in self.received if item.url == self.url(path)]

    async def _handle(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.received.append(
            Received(
                url=str(request.url),
                signature=request.headers.get("X-Twilio-Signature", ""),
                form=form,
            )
        )
        self.arrived.set()
        script = self.scripts.get(request.path, [])
        status = script.pop(0) if script else 200
        if status == SILENCE:
            await self._silence_ends.wait()
        return web.Response(
            status=status or 200,
            body=self.bodies.get(request.path, b""),
            content_type="text/plain",
            charset="utf-8",
        )


class AcceptingChannel:
    """Every address accepted, with a provider id made of the delivery key; but `dead…`, an
    unregistered device token."""

    async def send(self, message: Message) -> Result:
        if message.address.startswith("dead"):
            return Result(outcome=Outcome.DEAD_ADDRESS, error_code="Unregistered")
        return Result(outcome=Outcome.ACCEPTED, provider_ref=f"ref-{message.key}")

    async def close(self) -> None:
        pass


def no_credentials(credential: Credential) -> Channel:
    raise AssertionError("the test services have no credentials: the fallback channel sends")


@dataclass
class Engine:
    database: Database
    vault: Vault
    clock: Clock
    workers: list[Worker] = field(default_factory=list)

    def worker(self, name: str = "worker-a", *, callback_timeout: float = 10.0) -> Worker:
        channel = AcceptingChannel()
        worker = Worker(
            self.database,
            channels=no_credentials,
            fallback=lambda _binding_type: channel,
            vault=self.vault,
            signal=LocalSignal(),
            leader=SoleLeader(),
            config=WorkerConfig(
                batch_size=5000, max_in_flight=5000, lease=LEASE, callback_timeout=callback_timeout
            ),
            clock=self.clock,
            rng=random.Random(7),
            name=name,
        )
        self.workers.append(worker)
        return worker


@pytest.fixture
async def engine(database: Database, vault: Vault) -> AsyncIterator[Engine]:
    """The delivery engine; the queue is emptied of other tests' work first, and their open
    notifications closed, so no other test's callback is ever sent from here."""
    await database.transaction(functools.partial(quiet_the_queue, notifications=True))
    engine = Engine(database, vault, Clock())
    yield engine
    for worker in engine.workers:
        await worker.stop()


@pytest.fixture
async def application() -> AsyncIterator[Application]:
    server = Application()
    await server.start()
    yield server
    await server.close()


async def create_service(api: httpx.AsyncClient, **settings: str) -> str:
    response = await api.post("/v1/Services", data={"FriendlyName": "callbacks", **settings})
    assert response.status_code == 201, response.text
    return str(response.json()["sid"])


def tokens(count: int) -> list[str]:
    return [f"{n:064x}" for n in range(count)]


async def notify(
    api: httpx.AsyncClient,
    service_sid: str,
    addresses: Sequence[str] = (),
    *,
    callback: str | None = None,
    **params: str,
) -> str:
    data: dict[str, Any] = {"Body": "hello", **params}
    if addresses:
        data["ToBinding"] = [
            json.dumps({"binding_type": "apn", "address": address}) for address in addresses
        ]
    if callback is not None:
        data["DeliveryCallbackUrl"] = callback
    response = await api.post(f"/v1/Services/{service_sid}/Notifications", data=data)
    assert response.status_code == 201, response.text
    return str(response.json()["sid"])


async def send_everything(worker: Worker) -> None:
    """Fan out, send and sweep until nothing is due: every notification completes, and its
    callback is posted (once, unless the application fails it)."""
    while True:
        await worker.sweep_once()
        if not await worker.run_jobs() + await worker.dispatch_once():
            return


async def callback_of(
    api: httpx.AsyncClient, service_sid: str, sid: str, *, requests: bool = False
) -> dict[str, Any]:
    """The notification's `delivery_callback`; its `recent_requests` only if asked for."""
    response = await api.get(f"/v1/Services/{service_sid}/Notifications/{sid}")
    assert response.status_code == 200, response.text
    found = dict(response.json()["delivery_callback"])
    if not requests:
        del found["recent_requests"]
    return found


# ---------------------------------------------------------------------------------------------


async def test_a_finished_notification_is_reported_in_batches_of_up_to_a_thousand(
    api: httpx.AsyncClient, account: Account, engine: Engine, application: Application
) -> None:
    service_sid = await create_service(api)
    addresses = tokens(2500)
    sid = await notify(api, service_sid, addresses, callback=application.url("/status"))
    worker = engine.worker()
    await worker.dispatch_once()

    assert await worker.run_jobs() == 1

    # The application is a default aiohttp server: it takes at most 1000 form fields.
    full, last = callbacks.BATCH_SIZE, 2500 - 2 * callbacks.BATCH_SIZE
    posts = application.at("/status")
    assert [post.sequence for post in posts] == [0, 1, 2]
    assert [post.form["IsFinal"] for post in posts] == ["false", "false", "true"]
    assert [post.form["Count"] for post in posts] == [str(full), str(full), str(last)]
    assert [len(post.states()) for post in posts] == [full, full, last]
    assert len(posts[0].form) == 1000
    for post in posts:
        assert post.form["NotificationSid"] == sid
        assert post.form["AccountSid"] == account.sid
        assert post.form["ServiceSid"] == service_sid
    reported = [state["address"] for post in posts for state in post.states()]
    assert sorted(reported) == addresses
    assert await callback_of(api, service_sid, sid) == {
        "url": application.url("/status"),
        "status": "sent",
        "attempts": 1,
        "last_error": None,
        "batches_sent": 3,
    }


async def test_callbacks_are_signed_with_the_accounts_auth_token(
    api: httpx.AsyncClient, account: Account, engine: Engine, application: Application
) -> None:
    service_sid = await create_service(api)
    await notify(
        api,
        service_sid,
        tokens(callbacks.BATCH_SIZE + 1),
        callback=application.url("/signed?app=1"),
    )
    worker = engine.worker()
    await send_everything(worker)

    posts = application.at("/signed?app=1")
    assert len(posts) == 2
    for post in posts:
        assert RequestValidator(account.token).validate(post.url, post.form, post.signature)
        assert not RequestValidator("0" * 32).validate(post.url, post.form, post.signature)


async def test_each_delivery_state_says_what_became_of_one_delivery(
    api: httpx.AsyncClient, engine: Engine, application: Application
) -> None:
    service_sid = await create_service(api)
    (token,) = tokens(1)
    response = await api.post(
        f"/v1/Services/{service_sid}/Bindings",
        data={"Identity": "alice", "BindingType": "apn", "Address": token},
    )
    assert response.status_code == 201, response.text
    binding_sid = response.json()["sid"]
    await notify(api, service_sid, Identity="alice", DeliveryCallbackUrl=application.url("/a"))
    await notify(api, service_sid, ["not-a-device-token"], callback=application.url("/b"))
    await send_everything(engine.worker())

    ((sent,),) = [post.states() for post in application.at("/a")]
    assert sent["sid"].startswith("ref-")
    assert sent == {
        "sid": sent["sid"],
        "address": token,
        "type": "apn",
        "status": "SENT",
        "error_code": None,
        "error_message": None,
        "binding_sid": binding_sid,
        "identity": "alice",
    }
    ((failed,),) = [post.states() for post in application.at("/b")]
    assert failed["sid"].startswith("DL")
    assert (failed["address"], failed["status"], failed["error_code"]) == (
        "not-a-device-token",
        "FAILED",
        "52001",
    )
    assert (failed["binding_sid"], failed["identity"]) == (None, None)


async def test_deliveries_of_a_failover_chain_also_say_where_they_stand_in_it(
    api: httpx.AsyncClient, engine: Engine, application: Application
) -> None:
    """The Deliveries API's chain fields, as extension keys: only on deliveries of a chain (the
    plain delivery above has exactly Notify's keys)."""
    service_sid = await create_service(api)
    for binding_type, address in (("apn", "dead" + "0" * 60), ("sms", "+15005550006")):
        response = await api.post(
            f"/v1/Services/{service_sid}/Bindings",
            data={"Identity": "alice", "BindingType": binding_type, "Address": address},
        )
        assert response.status_code == 201, response.text
    await notify(
        api,
        service_sid,
        Identity="alice",
        Failover=json.dumps({"channels": ["push", "sms"], "wait": 120}),
        DeliveryCallbackUrl=application.url("/chain"),
    )
    worker = engine.worker()
    await send_everything(worker)
    engine.clock.advance(seconds=121)  # nobody confirms the SMS: the chain runs out
    await send_everything(worker)

    ((push, sms),) = [post.states() for post in application.at("/chain")]
    assert push["delivery_sid"].startswith("DL")
    assert push == {
        "sid": push["delivery_sid"],  # no provider id: APNs refused the token
        "address": "dead" + "0" * 60,
        "type": "apn",
        "status": "FAILED",
        "error_code": "Unregistered",
        "error_message": None,
        "binding_sid": push["binding_sid"],
        "identity": "alice",
        "delivery_sid": push["delivery_sid"],
        "failover_of": None,
        "failover_step": 0,
        "failover_reason": None,
    }
    assert sms["sid"].startswith("ref-")
    assert (sms["type"], sms["status"]) == ("sms", "SENT")
    assert (sms["failover_of"], sms["failover_step"], sms["failover_reason"]) == (
        push["delivery_sid"],
        1,
        "dead_token",
    )


async def test_a_notification_without_deliveries_gets_one_empty_final_batch(
    api: httpx.AsyncClient, engine: Engine, application: Application
) -> None:
    service_sid = await create_service(api)
    await notify(api, service_sid, Identity="nobody", DeliveryCallbackUrl=application.url("/0"))
    await send_everything(engine.worker())

    (post,) = application.at("/0")
    assert (post.form["Count"], post.form["SequenceId"], post.form["IsFinal"]) == ("0", "0", "true")
    assert post.states() == []


async def test_the_service_url_is_used_when_enabled_and_the_notification_has_none(
    api: httpx.AsyncClient, engine: Engine, application: Application
) -> None:
    service_sid = await create_service(
        api, DeliveryCallbackUrl=application.url("/service"), DeliveryCallbackEnabled="true"
    )
    plain = await notify(api, service_sid, tokens(1))
    own = await notify(api, service_sid, tokens(1), callback=application.url("/own"))
    await send_everything(engine.worker())

    assert [post.form["NotificationSid"] for post in application.at("/service")] == [plain]
    assert [post.form["NotificationSid"] for post in application.at("/own")] == [own]


async def test_no_callback_is_sent_without_a_url_or_with_the_services_disabled(
    api: httpx.AsyncClient, engine: Engine, application: Application
) -> None:
    disabled = await create_service(api, DeliveryCallbackUrl=application.url("/disabled"))
    sid = await notify(api, disabled, tokens(1))
    await notify(api, await create_service(api), tokens(1))
    worker = engine.worker()
    await send_everything(worker)

    assert await worker.run_jobs() == 0
    assert application.received == []
    assert await callback_of(api, disabled, sid) == {
        "url": None,
        "status": None,
        "attempts": 0,
        "last_error": None,
        "batches_sent": 0,
    }


async def test_nothing_is_reported_before_the_notification_completes(
    api: httpx.AsyncClient, engine: Engine, application: Application
) -> None:
    service_sid = await create_service(api)
    sid = await notify(api, service_sid, tokens(1), callback=application.url("/later"))

    assert await engine.worker().run_jobs() == 0
    assert application.received == []
    assert (await callback_of(api, service_sid, sid))["status"] is None


async def test_a_failed_post_is_retried_after_a_backoff_until_it_succeeds(
    api: httpx.AsyncClient, engine: Engine, application: Application
) -> None:
    service_sid = await create_service(api)
    application.scripts["/flaky"] = [500]
    sid = await notify(api, service_sid, tokens(1), callback=application.url("/flaky"))
    worker = engine.worker()
    await send_everything(worker)

    assert len(application.at("/flaky")) == 1
    assert await callback_of(api, service_sid, sid) == {
        "url": application.url("/flaky"),
        "status": "pending",
        "attempts": 1,
        "last_error": "batch 0: HTTP 500 Internal Server Error",
        "batches_sent": 0,
    }
    assert await worker.run_jobs() == 0  # not due yet

    engine.clock.advance(seconds=retry.backoff_ceiling(1))
    assert await worker.run_jobs() == 1

    assert [post.sequence for post in application.at("/flaky")] == [0, 0]
    assert await callback_of(api, service_sid, sid) == {
        "url": application.url("/flaky"),
        "status": "sent",
        "attempts": 2,
        "last_error": None,
        "batches_sent": 1,
    }


async def test_an_endpoint_that_never_answers_fails_the_callback_after_its_attempts(
    api: httpx.AsyncClient, engine: Engine, application: Application
) -> None:
    service_sid = await create_service(api)
    application.scripts["/silent"] = [SILENCE] * callbacks.MAX_ATTEMPTS
    sid = await notify(api, service_sid, tokens(1), callback=application.url("/silent"))
    worker = engine.worker(callback_timeout=CALLBACK_TIMEOUT)
    await send_everything(worker)

    for _ in range(callbacks.MAX_ATTEMPTS - 1):
        engine.clock.advance(seconds=retry.MAX_DELAY)
        assert await worker.run_jobs() == 1
    engine.clock.advance(seconds=retry.MAX_DELAY)
    assert await worker.run_jobs() == 0

    assert len(application.at("/silent")) == callbacks.MAX_ATTEMPTS
    assert await callback_of(api, service_sid, sid) == {
        "url": application.url("/silent"),
        "status": "failed",
        "attempts": callbacks.MAX_ATTEMPTS,
        "last_error": f"batch 0: no answer within {CALLBACK_TIMEOUT:g} s",
        "batches_sent": 0,
    }


async def test_callback_posts_held_by_a_silent_endpoint_do_not_hold_up_fan_outs(
    api: httpx.AsyncClient, engine: Engine, application: Application
) -> None:
    service_sid = await create_service(api)
    room = WorkerConfig().max_callback_posts
    application.scripts["/silent"] = [SILENCE] * room
    for _ in range(room):
        await notify(api, service_sid, tokens(1), callback=application.url("/silent"))
    worker = engine.worker(callback_timeout=600)
    await worker.start()
    async with asyncio.timeout(30):
        while len(application.at("/silent")) < room:  # every callback post is out, unanswered
            application.arrived.clear()
            await application.arrived.wait()

    registered = await api.post(
        f"/v1/Services/{service_sid}/Bindings",
        data={"Identity": "alice", "BindingType": "apn", "Address": tokens(1)[0]},
    )
    assert registered.status_code == 201, registered.text
    sid = await notify(api, service_sid, Identity="alice")  # a fan-out job

    async with asyncio.timeout(30):
        while True:
            fetched = await api.get(f"/v1/Services/{service_sid}/Notifications/{sid}")
            if fetched.json()["status"] == "completed":
                break
            await asyncio.sleep(0.05)
    assert fetched.json()["deliveries"]["sent"] == 1


async def test_a_worker_that_dies_mid_callback_is_resumed_without_resending_acknowledged_batches(
    api: httpx.AsyncClient, engine: Engine, application: Application
) -> None:
    service_sid = await create_service(api)
    application.scripts["/resume"] = [200, SILENCE]
    sid = await notify(api, service_sid, tokens(2500), callback=application.url("/resume"))
    dying = engine.worker("dying")
    await dying.dispatch_once()

    # The worker dies while its second batch is out: no result is stored, its lease stays.
    running = asyncio.create_task(dying.run_jobs())
    async with asyncio.timeout(10):
        while len(application.at("/resume")) < 2:
            application.arrived.clear()
            await application.arrived.wait()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert (await callback_of(api, service_sid, sid))["batches_sent"] == 1

    survivor = engine.worker("survivor")
    assert await survivor.run_jobs() == 0  # still leased to the dead worker
    engine.clock.advance(seconds=LEASE.total_seconds() + 1)
    assert (await survivor.sweep_once()).jobs == 1
    assert await survivor.run_jobs() == 1

    assert [post.sequence for post in application.at("/resume")] == [0, 1, 1, 2]
    assert (await callback_of(api, service_sid, sid))["status"] == "sent"


async def test_a_stopping_worker_hands_the_callback_back_after_the_batch_in_flight(
    api: httpx.AsyncClient, engine: Engine, application: Application
) -> None:
    service_sid = await create_service(api)
    sid = await notify(api, service_sid, tokens(2500), callback=application.url("/stop"))
    await engine.worker().dispatch_once()
    handler = DeliveryCallbacks(
        engine.database,
        vault=engine.vault,
        owner="stopping",
        clock=engine.clock,
        lease=LEASE,
        stopping=lambda: True,
    )
    (claimed,) = await engine.database.transaction(
        lambda conn: queue.claim_jobs(
            conn, owner="stopping", now=engine.clock(), lease=LEASE, limit=1, kinds=[callbacks.KIND]
        )
    )
    try:
        await handler.run(claimed)
    finally:
        await handler.close()

    assert [post.sequence for post in application.at("/stop")] == [0]
    state = await callback_of(api, service_sid, sid)
    assert (state["status"], state["batches_sent"], state["attempts"]) == ("pending", 1, 0)

    assert await engine.workers[0].run_jobs() == 1
    assert [post.sequence for post in application.at("/stop")] == [0, 1, 2]


async def test_a_notification_has_its_callback_queued_once(
    api: httpx.AsyncClient, database: Database, engine: Engine, application: Application
) -> None:
    service_sid = await create_service(api)
    sid = await notify(api, service_sid, tokens(1), callback=application.url("/once"))
    await engine.worker().dispatch_once()

    def enqueue_again(conn: Connection) -> int:
        notification_id = conn.scalar(select(notification.c.id).where(notification.c.sid == sid))
        callbacks.enqueue(conn, now=utcnow(), notification_ids=[notification_id])
        return len(
            conn.scalars(
                select(job.c.id).where(
                    job.c.notification_id == notification_id, job.c.kind == callbacks.KIND
                )
            ).all()
        )

    assert await database.transaction(enqueue_again) == 1
    await send_everything(engine.workers[0])
    assert len(application.at("/once")) == 1


# --- what each POST got back, for the debugger -----------------------------------------------


async def attempts_of(database: Database, sid: str) -> list[callbacks.Attempt]:
    """The notification's recorded callback POSTs, oldest first."""

    def load(conn: Connection) -> list[callbacks.Attempt]:
        notification_id = conn.scalar(select(notification.c.id).where(notification.c.sid == sid))
        return callbacks.attempts(conn, notification_id=notification_id, limit=1000).latest[::-1]

    return await database.read(load)


async def test_every_post_is_recorded_with_the_answer_it_got(
    api: httpx.AsyncClient, database: Database, engine: Engine, application: Application
) -> None:
    service_sid = await create_service(api)
    application.scripts["/answers"] = [503]
    application.bodies["/answers"] = b"<h1>Busy</h1>"
    sid = await notify(
        api, service_sid, tokens(callbacks.BATCH_SIZE + 1), callback=application.url("/answers")
    )
    worker = engine.worker()
    await send_everything(worker)
    engine.clock.advance(seconds=retry.backoff_ceiling(1))
    assert await worker.run_jobs() == 1

    recorded = await attempts_of(database, sid)
    assert [
        (a.sequence, a.final, a.deliveries, a.attempt, a.status_code, a.error, a.response_excerpt)
        for a in recorded
    ] == [
        (0, False, callbacks.BATCH_SIZE, 1, 503, None, "<h1>Busy</h1>"),
        (0, False, callbacks.BATCH_SIZE, 2, 200, None, "<h1>Busy</h1>"),
        (1, True, 1, 1, 200, None, "<h1>Busy</h1>"),
    ]
    assert [a.acknowledged for a in recorded] == [False, True, True]
    assert all(a.latency_ms >= 0 for a in recorded)
    assert recorded[0].at < recorded[1].at  # the retry came after the backoff

    # The API shows them too, newest first (an extension of the notification's record).
    shown = (await callback_of(api, service_sid, sid, requests=True))["recent_requests"]
    assert [
        (r["sequence_id"], r["is_final"], r["count"], r["attempt"], r["status_code"], r["error"])
        for r in shown
    ] == [
        (1, True, 1, 1, 200, None),
        (0, False, callbacks.BATCH_SIZE, 2, 200, None),
        (0, False, callbacks.BATCH_SIZE, 1, 503, None),
    ]
    assert shown[-1]["response_excerpt"] == "<h1>Busy</h1>"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", shown[0]["date_sent"])
    assert isinstance(shown[0]["latency_ms"], int)


async def test_an_unreachable_receiver_is_recorded_with_the_connection_error(
    api: httpx.AsyncClient, database: Database, engine: Engine
) -> None:
    service_sid = await create_service(api)
    sid = await notify(
        api, service_sid, tokens(1), callback=f"http://127.0.0.1:{closed_port()}/nobody"
    )
    await send_everything(engine.worker())

    (attempt,) = await attempts_of(database, sid)
    assert (attempt.sequence, attempt.final, attempt.deliveries, attempt.attempt) == (0, True, 1, 1)
    assert attempt.status_code is None
    assert attempt.response_excerpt is None
    assert attempt.error is not None
    assert attempt.error.startswith("could not reach the callback URL")


async def test_only_the_last_attempts_of_a_batch_are_kept(
    api: httpx.AsyncClient, database: Database, engine: Engine, application: Application
) -> None:
    """A receiver failing for hours leaves a few rows, not one per try."""
    service_sid = await create_service(api)
    application.scripts["/down"] = [500] * callbacks.MAX_ATTEMPTS
    sid = await notify(api, service_sid, tokens(1), callback=application.url("/down"))
    worker = engine.worker()
    await send_everything(worker)
    for _ in range(callbacks.MAX_ATTEMPTS - 1):
        engine.clock.advance(seconds=retry.MAX_DELAY)
        assert await worker.run_jobs() == 1

    assert len(application.at("/down")) == callbacks.MAX_ATTEMPTS
    recorded = await attempts_of(database, sid)
    first_kept = callbacks.MAX_ATTEMPTS - callbacks.KEPT_ATTEMPTS + 1
    assert [a.attempt for a in recorded] == list(range(first_kept, callbacks.MAX_ATTEMPTS + 1))
    assert {a.status_code for a in recorded} == {500}
    assert (await callback_of(api, service_sid, sid))["status"] == "failed"


async def test_a_response_body_is_kept_as_a_short_clean_excerpt(
    api: httpx.AsyncClient, database: Database, engine: Engine, application: Application
) -> None:
    service_sid = await create_service(api)
    # Control characters (an ANSI escape, a NUL), a CRLF, and far more than a kilobyte.
    application.bodies["/chatty"] = b"ok\x1b[31m\x00red\r\nline 2\t" + b"x" * 5000
    sid = await notify(api, service_sid, tokens(1), callback=application.url("/chatty"))
    await send_everything(engine.worker())

    (attempt,) = await attempts_of(database, sid)
    excerpt = attempt.response_excerpt
    assert excerpt is not None
    assert excerpt.startswith("ok\ufffd[31m\ufffdred\nline 2\t")
    assert excerpt.endswith("x…")
    assert len(excerpt.encode()) <= EXCERPT_BYTES + 16
    assert all(char in "\t\n" or char >= " " for char in excerpt)
