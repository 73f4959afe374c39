"""`GET`/`POST /v1/Callbacks/Messenger/{CredentialSid}`: a page's webhook confirms deliveries.

Messages are sent for real: the worker sends them through the Messenger channel to the Send API
emulator (the credential's ProviderUrl), so each delivery carries the message id Graph gave it.
Webhook bodies are written as Meta documents `message_deliveries` and `message_reads`, and
signed here with hashlib (not with Clarion's code). The worker runs on a test clock, so failover
timers fire when the test moves time.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from assertions import assert_error
from clarion.delivery.channels import Endpoints, factory
from clarion.delivery.wakeup import LocalSignal, SoleLeader
from clarion.delivery.worker import Worker
from clarion.emulators.messenger import MessengerEmulator
from clarion.store.database import Database
from clarion.vault import Vault
from support import Clock as WallClock
from support import quiet_the_queue

PAGE_ID = "1122334455"
PAGE_TOKEN = "page-access-token"
PSID = "2400000000000001"
PHONE = "+15005550006"
MESSENGER_THEN_SMS = json.dumps({"channels": ["messenger", "sms"], "wait": 120})
NO_AUTH = httpx.Auth()  # webhooks carry no account credentials


class Clock(WallClock):
    """The wall clock, moved forward by the test, that also speaks Messenger's time."""

    def watermark(self) -> int:
        """A moment after everything so far, as Messenger writes times (ms since the epoch)."""
        self.advance(seconds=1)
        return int(self().replace(tzinfo=UTC).timestamp() * 1000)


@dataclass
class Page:
    """A service of the test account whose Messenger credential is aimed at the emulator."""

    credential_sid: str
    app_secret: str
    service_sid: str

    @property
    def webhook(self) -> str:
        return f"/v1/Callbacks/Messenger/{self.credential_sid}"


@pytest.fixture
async def graph() -> AsyncIterator[MessengerEmulator]:
    async with MessengerEmulator(pages={PAGE_ID: PAGE_TOKEN}) as emulator:
        yield emulator


async def messenger_credential(
    api: httpx.AsyncClient, graph: MessengerEmulator, **extra: str
) -> tuple[str, str]:
    """(SID, app secret) of a new messenger credential of `api`'s account."""
    app_secret = f"secret-{random.getrandbits(64):016x}"
    params = {"AppSecret": app_secret, **extra}
    response = await api.post(
        "/v1/Credentials",
        data={
            "Type": "messenger",
            "PageId": PAGE_ID,
            "PageAccessToken": PAGE_TOKEN,
            "ProviderUrl": graph.url,
            **{name: value for name, value in params.items() if value},
        },
    )
    assert response.status_code == 201, response.text
    return str(response.json()["sid"]), app_secret


@pytest.fixture
async def page(api: httpx.AsyncClient, graph: MessengerEmulator) -> Page:
    credential_sid, app_secret = await messenger_credential(api, graph)
    response = await api.post(
        "/v1/Services",
        data={"FriendlyName": "messenger", "FacebookMessengerCredentialSid": credential_sid},
    )
    assert response.status_code == 201, response.text
    service_sid = str(response.json()["sid"])
    for binding_type, address in (("facebook-messenger", PSID), ("sms", PHONE)):
        response = await api.post(
            f"/v1/Services/{service_sid}/Bindings",
            data={"Identity": "alice", "BindingType": binding_type, "Address": address},
        )
        assert response.status_code == 201, response.text
    return Page(credential_sid, app_secret, service_sid)


# Other tests' work out of the way: this worker sends only this test's notifications.
QUIET = functools.partial(quiet_the_queue, notifications=True, failover_chains=True)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def worker(database: Database, vault: Vault, clock: Clock) -> AsyncIterator[Worker]:
    """The delivery engine with the real channel adapters, on a quiet queue."""
    await database.transaction(QUIET)
    worker = Worker(
        database,
        channels=factory(Endpoints(public_url="http://testserver")),
        vault=vault,
        signal=LocalSignal(),
        leader=SoleLeader(),
        clock=clock,
        rng=random.Random(7),
        name="messenger-webhooks",
    )
    yield worker
    await worker.stop()
    await database.transaction(QUIET)


async def send(
    api: httpx.AsyncClient, page: Page, worker: Worker, **params: str
) -> tuple[str, dict[str, Any]]:
    """Notify alice and let the worker send it; (notification SID, her Messenger delivery)."""
    response = await api.post(
        f"/v1/Services/{page.service_sid}/Notifications",
        data={"Identity": "alice", "Body": "Your order shipped", **params},
    )
    assert response.status_code == 201, response.text
    sid = str(response.json()["sid"])
    await worker.run_jobs()
    await worker.dispatch_once()
    (messenger,) = (await deliveries(api, page, sid))["facebook-messenger"]
    assert messenger["status"] == "sent"
    assert messenger["provider_sid"].startswith("m_")
    return sid, messenger


async def deliveries(
    api: httpx.AsyncClient, page: Page, notification_sid: str
) -> dict[str, list[dict[str, Any]]]:
    """The notification's deliveries by channel, as the Deliveries API shows them."""
    response = await api.get(
        f"/v1/Services/{page.service_sid}/Notifications/{notification_sid}/Deliveries"
    )
    assert response.status_code == 200, response.text
    by_channel: dict[str, list[dict[str, Any]]] = {}
    for row in response.json()["deliveries"]:
        by_channel.setdefault(row["channel"], []).append(row)
    return by_channel


async def status_of(api: httpx.AsyncClient, page: Page, notification_sid: str) -> str:
    (messenger,) = (await deliveries(api, page, notification_sid))["facebook-messenger"]
    return str(messenger["status"])


def delivery_event(*, mids: list[str] | None, watermark: int) -> dict[str, Any]:
    detail: dict[str, Any] = {"watermark": watermark}
    if mids is not None:
        detail["mids"] = mids
    return {"delivery": detail}


def read_event(*, watermark: int) -> dict[str, Any]:
    return {"read": {"watermark": watermark}}


def webhook_body(*events: dict[str, Any], psid: str = PSID) -> bytes:
    """A page webhook POST body as Meta sends it: one entry, these events from `psid`."""
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    messaging = [
        {"sender": {"id": psid}, "recipient": {"id": PAGE_ID}, "timestamp": now_ms, **event}
        for event in events
    ]
    entry = {"id": PAGE_ID, "time": now_ms, "messaging": messaging}
    return json.dumps({"object": "page", "entry": [entry]}).encode()


def signature(body: bytes, app_secret: str) -> str:
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


async def post_webhook(
    api: httpx.AsyncClient, url: str, body: bytes, app_secret: str
) -> httpx.Response:
    return await api.post(
        url,
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-Hub-Signature-256": signature(body, app_secret),
        },
        auth=NO_AUTH,
    )


def verify_token(app_secret: str, credential_sid: str) -> str:
    """What docs/api.md tells the page owner to enter as Meta's Verify Token."""
    return hmac.new(app_secret.encode(), credential_sid.encode(), hashlib.sha256).hexdigest()


# --- confirmations ----------------------------------------------------------------------------


async def test_a_signed_delivery_event_confirms_the_message_and_stops_the_failover(
    api: httpx.AsyncClient, page: Page, worker: Worker, clock: Clock
) -> None:
    sid, messenger = await send(api, page, worker, Failover=MESSENGER_THEN_SMS)

    body = webhook_body(
        delivery_event(mids=[messenger["provider_sid"]], watermark=clock.watermark())
    )
    response = await post_webhook(api, page.webhook, body, page.app_secret)

    assert (response.status_code, response.text) == (200, "EVENT_RECEIVED")
    assert await status_of(api, page, sid) == "delivered"
    clock.advance(seconds=121)
    await worker.sweep_once()
    await worker.dispatch_once()
    assert set(await deliveries(api, page, sid)) == {"facebook-messenger"}  # no SMS
    fetched = (await api.get(f"/v1/Services/{page.service_sid}/Notifications/{sid}")).json()
    assert fetched["status"] == "completed"
    identities = fetched["failover"]["identities"]
    assert (identities["confirmed"], identities["by_channel"]["messenger"]["confirmed"]) == (1, 1)


async def test_unconfirmed_the_chain_moves_on_to_sms(
    api: httpx.AsyncClient, page: Page, worker: Worker, clock: Clock
) -> None:
    """What the webhook prevents: after `wait` without a sign of life, alice gets an SMS."""
    sid, _messenger = await send(api, page, worker, Failover=MESSENGER_THEN_SMS)

    clock.advance(seconds=121)
    await worker.sweep_once()

    (sms,) = (await deliveries(api, page, sid))["sms"]
    assert sms["failover_reason"] == "no_receipt"


async def test_a_watermark_without_mids_confirms_every_message_sent_until_then(
    api: httpx.AsyncClient, page: Page, worker: Worker, clock: Clock
) -> None:
    """Older Messenger clients report only a watermark: all messages sent before it arrived."""
    first, _ = await send(api, page, worker)
    second, _ = await send(api, page, worker)
    watermark = clock.watermark()
    clock.advance(seconds=1)
    later, _ = await send(api, page, worker)

    body = webhook_body(delivery_event(mids=None, watermark=watermark))
    response = await post_webhook(api, page.webhook, body, page.app_secret)

    assert response.status_code == 200, response.text
    assert [await status_of(api, page, sid) for sid in (first, second, later)] == [
        "delivered",
        "delivered",
        "sent",
    ]


async def test_a_read_event_confirms_like_a_delivery(
    api: httpx.AsyncClient, page: Page, worker: Worker, clock: Clock
) -> None:
    """Read implies delivered: `message_reads` carries only a watermark."""
    sid, _ = await send(api, page, worker, Failover=MESSENGER_THEN_SMS)

    body = webhook_body(read_event(watermark=clock.watermark()))
    response = await post_webhook(api, page.webhook, body, page.app_secret)

    assert response.status_code == 200, response.text
    assert await status_of(api, page, sid) == "delivered"
    clock.advance(seconds=121)
    await worker.sweep_once()
    assert "sms" not in await deliveries(api, page, sid)


async def test_another_persons_watermark_confirms_nothing(
    api: httpx.AsyncClient, page: Page, worker: Worker, clock: Clock
) -> None:
    sid, _ = await send(api, page, worker)

    body = webhook_body(read_event(watermark=clock.watermark()), psid="2400000000000999")
    response = await post_webhook(api, page.webhook, body, page.app_secret)

    assert response.status_code == 200, response.text
    assert await status_of(api, page, sid) == "sent"


async def test_an_unknown_message_id_is_acknowledged(
    api: httpx.AsyncClient, page: Page, clock: Clock
) -> None:
    """Meta retries anything but a 200; a message Clarion did not send is not worth that."""
    body = webhook_body(delivery_event(mids=["m_unknown"], watermark=clock.watermark()))

    response = await post_webhook(api, page.webhook, body, page.app_secret)

    assert (response.status_code, response.text) == (200, "EVENT_RECEIVED")


async def test_other_events_and_objects_are_acknowledged_and_skipped(
    api: httpx.AsyncClient, page: Page
) -> None:
    message = webhook_body({"message": {"mid": "m_in", "text": "hi"}})
    instagram = json.dumps({"object": "instagram", "entry": []}).encode()

    for body in (message, instagram):
        response = await post_webhook(api, page.webhook, body, page.app_secret)
        assert response.status_code == 200, response.text


# --- refusals ---------------------------------------------------------------------------------


async def test_a_wrong_or_missing_signature_is_refused_and_changes_nothing(
    api: httpx.AsyncClient, page: Page, worker: Worker, clock: Clock
) -> None:
    sid, messenger = await send(api, page, worker)
    body = webhook_body(
        delivery_event(mids=[messenger["provider_sid"]], watermark=clock.watermark())
    )
    legacy = "sha1=" + hmac.new(page.app_secret.encode(), body, hashlib.sha1).hexdigest()

    for header in (signature(body, "not-the-app-secret"), legacy, None):
        headers = {"Content-Type": "application/json"}
        if header is not None:
            headers["X-Hub-Signature-256"] = header
        response = await api.post(page.webhook, content=body, headers=headers, auth=NO_AUTH)
        assert_error(response, 403, 20403, "X-Hub-Signature-256")

    assert await status_of(api, page, sid) == "sent"


async def test_a_signed_body_that_is_not_a_messenger_webhook_is_a_400(
    api: httpx.AsyncClient, page: Page
) -> None:
    for body, problem in (
        (b"{not json", "Not a Messenger webhook body"),
        (b'{"object": "page", "entry": {}}', "entry"),
        (webhook_body({"delivery": {"mids": ["m_1"]}}), "watermark"),
        (webhook_body({"delivery": {"watermark": 1}}, psid=""), "sender.id"),
    ):
        response = await post_webhook(api, page.webhook, body, page.app_secret)
        assert_error(response, 400, 20001, problem)


async def test_another_accounts_credential_cannot_confirm_this_accounts_messages(
    api: httpx.AsyncClient,
    other_api: httpx.AsyncClient,
    graph: MessengerEmulator,
    page: Page,
    worker: Worker,
    clock: Clock,
) -> None:
    sid, messenger = await send(api, page, worker)
    other_sid, other_secret = await messenger_credential(other_api, graph)
    body = webhook_body(
        delivery_event(mids=[messenger["provider_sid"]], watermark=clock.watermark())
    )

    # Its own webhook is heard, but reports only on its own account's deliveries…
    response = await post_webhook(api, f"/v1/Callbacks/Messenger/{other_sid}", body, other_secret)
    assert response.status_code == 200, response.text
    # …and it cannot sign for this account's credential.
    response = await post_webhook(api, page.webhook, body, other_secret)
    assert_error(response, 403, 20403)

    assert await status_of(api, page, sid) == "sent"


async def test_unknown_credentials_and_other_types_are_404(
    api: httpx.AsyncClient, page: Page
) -> None:
    response = await api.post(
        "/v1/Credentials",
        data={
            "Type": "twilio-sms",
            "AccountSid": "AC" + "1" * 32,
            "AuthToken": "token",
            "From": "+14155550100",
        },
    )
    sms_sid = response.json()["sid"]
    body = webhook_body(read_event(watermark=1))

    for sid in ("CR" + "f" * 32, sms_sid, "nope"):
        response = await post_webhook(api, f"/v1/Callbacks/Messenger/{sid}", body, "token")
        assert_error(response, 404, 20404)


async def test_a_credential_without_an_app_secret_says_to_add_one(
    api: httpx.AsyncClient, graph: MessengerEmulator
) -> None:
    sid, _ = await messenger_credential(api, graph, AppSecret="")
    body = webhook_body(read_event(watermark=1))

    response = await post_webhook(api, f"/v1/Callbacks/Messenger/{sid}", body, "guess")

    assert_error(response, 403, 20403, sid, "AppSecret")


# --- the subscription handshake ---------------------------------------------------------------


async def test_the_verification_handshake_echoes_the_challenge(
    api: httpx.AsyncClient, page: Page
) -> None:
    query = {
        "hub.mode": "subscribe",
        "hub.verify_token": verify_token(page.app_secret, page.credential_sid),
        "hub.challenge": "1158201444",
    }

    response = await api.get(page.webhook, params=query, auth=NO_AUTH)

    assert (response.status_code, response.text) == (200, "1158201444")


async def test_a_handshake_with_another_verify_token_is_refused(
    api: httpx.AsyncClient, page: Page
) -> None:
    for token in ("guess", page.app_secret, verify_token("another-secret", page.credential_sid)):
        query = {"hub.mode": "subscribe", "hub.verify_token": token, "hub.challenge": "42"}
        response = await api.get(page.webhook, params=query, auth=NO_AUTH)
        assert_error(response, 403, 20403, "hub.verify_token")


async def test_a_handshake_that_is_not_a_subscription_is_a_400(
    api: httpx.AsyncClient, page: Page
) -> None:
    token = verify_token(page.app_secret, page.credential_sid)

    response = await api.get(
        page.webhook,
        params={"hub.mode": "unsubscribe", "hub.verify_token": token, "hub.challenge": "42"},
        auth=NO_AUTH,
    )
    assert_error(response, 400, 20001, "hub.mode")
    response = await api.get(
        page.webhook, params={"hub.mode": "subscribe", "hub.verify_token": token}, auth=NO_AUTH
    )
    assert_error(response, 400, 20001, "hub.challenge")
