"""Web Push: the channel against the push-service emulator, over real TLS sockets.

The emulator holds each subscription's browser keys, so every test that expects a push checks
the plaintext the service worker would read: the encryption (RFC 8291) is proven by decrypting
it, the VAPID header (RFC 8292) by the emulator's own verification. Each answer class of
providers.md §6 maps to one outcome.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clarion import addresses
from clarion.channels.base import Message, Outcome
from clarion.channels.webpush import (
    DEFAULT_TTL,
    MAX_PLAINTEXT_BYTES,
    VAPID_LIFETIME,
    VapidSigner,
    WebPushChannel,
)
from clarion.emulators.webpush import Subscription, WebPushEmulator
from support import closed_port

NOW = 1_900_000_000.0
CONTACT = "mailto:ops@example.com"
KEY = "0123abcd-ef01-2345-6789-abcdef012345"


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def vapid_private_key() -> str:
    """A VAPID private key as a webpush credential stores it: 32 bytes, base64url."""
    scalar = ec.generate_private_key(ec.SECP256R1()).private_numbers().private_value
    return b64url(scalar.to_bytes(32, "big"))


PRIVATE_KEY = vapid_private_key()


@pytest.fixture
async def service() -> AsyncIterator[WebPushEmulator]:
    async with WebPushEmulator(clock=lambda: NOW) as emulator:
        yield emulator


def webpush(service: WebPushEmulator, **options: Any) -> WebPushChannel:
    settings: dict[str, Any] = {
        "vapid_private_key": PRIVATE_KEY,
        "subject": CONTACT,
        "ssl_context": service.client_ssl_context(),
        "clock": lambda: NOW,
        **options,
    }
    return WebPushChannel(**settings)


@pytest.fixture
async def channel(service: WebPushEmulator) -> AsyncIterator[WebPushChannel]:
    channel = webpush(service)
    yield channel
    await channel.close()


@pytest.fixture
def browser(service: WebPushEmulator, channel: WebPushChannel) -> Subscription:
    """A browser that subscribed with the channel's public key, as a page does."""
    return service.subscribe(application_server_key=channel.vapid_public_key)


def push(
    subscription: Subscription | str,
    payload: dict[str, Any] | None = None,
    **fields: Any,
) -> Message:
    address = subscription if isinstance(subscription, str) else subscription.address()
    return Message(
        key=fields.pop("key", KEY),
        address=addresses.normalize("webpush", address),
        payload=payload or {"title": "Order shipped", "body": "It's on its way"},
        **fields,
    )


def browser_elsewhere(endpoint: str) -> Subscription:
    """A subscription some other push service issued: valid keys the emulator never saw."""
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    point = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return Subscription(
        endpoint=endpoint, p256dh=b64url(point), auth=b64url(secrets.token_bytes(16))
    )


def at(seconds_from_now: float) -> datetime:
    return datetime.fromtimestamp(NOW + seconds_from_now, UTC)


# --- encryption and delivery ------------------------------------------------------------------


async def test_a_push_is_accepted_and_decrypts_to_the_payload(
    channel: WebPushChannel, service: WebPushEmulator, browser: Subscription
) -> None:
    payload = {"title": "Order shipped", "body": "Ünïcode ✓", "data": {"order": 42}}

    result = await channel.send(push(browser, payload))

    assert result.outcome is Outcome.ACCEPTED
    [received] = service.received
    assert received.json() == payload
    assert received.endpoint == browser.endpoint
    assert received.subject == CONTACT
    # The push message resource the service created (RFC 8030 §5).
    assert result.provider_ref is not None
    assert result.provider_ref.startswith(f"{service.url}/message/")


async def test_every_push_is_encrypted_with_a_fresh_sender_key(
    channel: WebPushChannel, service: WebPushEmulator, browser: Subscription
) -> None:
    await channel.send(push(browser))
    await channel.send(push(browser))

    first, second = service.received
    assert first.plaintext == second.plaintext
    # aes128gcm header: salt(16) ‖ rs(4) ‖ idlen(1) ‖ the sender's public key(65).
    assert first.body[:16] != second.body[:16]
    assert first.body[21:86] != second.body[21:86]


async def test_the_largest_payload_push_services_must_take_fits_one_record(
    channel: WebPushChannel, service: WebPushEmulator, browser: Subscription
) -> None:
    envelope = len(json.dumps({"body": ""}, separators=(",", ":")))
    payload = {"body": "x" * (MAX_PLAINTEXT_BYTES - envelope)}

    result = await channel.send(push(browser, payload))

    assert result.outcome is Outcome.ACCEPTED
    assert len(service.received[0].body) == 4096
    assert service.received[0].json() == payload


async def test_a_payload_too_large_for_web_push_fails_without_a_request(
    channel: WebPushChannel, service: WebPushEmulator, browser: Subscription
) -> None:
    result = await channel.send(push(browser, {"body": "x" * MAX_PLAINTEXT_BYTES}))

    assert result.outcome is Outcome.FAILED
    assert result.error_message is not None
    assert "payload too large" in result.error_message
    assert service.received == []


# --- TTL, Urgency, Topic ----------------------------------------------------------------------


async def test_ttl_counts_down_to_the_notifications_expiry(
    channel: WebPushChannel, service: WebPushEmulator, browser: Subscription
) -> None:
    await channel.send(push(browser, expires_at=at(3600)))
    await channel.send(push(browser, expires_at=at(-5)))
    await channel.send(push(browser, expires_at=None))

    assert [message.ttl for message in service.received] == [3600, 0, DEFAULT_TTL]


async def test_the_store_s_naive_utc_expiry_reads_as_utc(
    channel: WebPushChannel, service: WebPushEmulator, browser: Subscription
) -> None:
    await channel.send(push(browser, expires_at=at(60).replace(tzinfo=None)))

    assert service.received[0].ttl == 60


@pytest.mark.parametrize(("priority", "urgency"), [("high", "high"), ("low", "low")])
async def test_priority_becomes_urgency(
    channel: WebPushChannel,
    service: WebPushEmulator,
    browser: Subscription,
    priority: str,
    urgency: str,
) -> None:
    await channel.send(push(browser, priority=priority))

    assert service.received[0].urgency == urgency


async def test_a_retried_push_replaces_the_copy_still_waiting_for_the_browser(
    channel: WebPushChannel, service: WebPushEmulator, browser: Subscription
) -> None:
    await channel.send(push(browser, {"body": "first try"}))
    await channel.send(push(browser, {"body": "second try"}))
    await channel.send(push(browser, {"body": "another delivery"}, key="ffff0000-" + KEY[9:]))

    assert service.received[0].topic == KEY.replace("-", "")
    pending = [message.json()["body"] for message in service.pending(browser.endpoint)]
    assert pending == ["second try", "another delivery"]


# --- VAPID (RFC 8292) -------------------------------------------------------------------------


def claims(header: str, signer: VapidSigner) -> dict[str, Any]:
    scheme, _, params = header.partition(" ")
    token, key = (part.split("=", 1)[1] for part in params.split(", "))
    assert (scheme, key) == ("vapid", signer.public_key)
    point = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
    public_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    decoded: dict[str, Any] = jwt.decode(
        token, public_key, algorithms=["ES256"], options={"verify_aud": False, "verify_exp": False}
    )
    return decoded


def test_the_vapid_header_is_signed_once_per_origin_until_it_nears_expiry() -> None:
    now = [NOW]
    signer = VapidSigner(private_key=PRIVATE_KEY, subject=CONTACT, clock=lambda: now[0])

    fcm = signer.authorization("https://fcm.googleapis.com")
    assert signer.authorization("https://fcm.googleapis.com") == fcm
    mozilla = signer.authorization("https://updates.push.services.mozilla.com")
    now[0] += VAPID_LIFETIME - 3600 + 1
    renewed = signer.authorization("https://fcm.googleapis.com")

    assert claims(fcm, signer) == {
        "aud": "https://fcm.googleapis.com",
        "exp": int(NOW) + VAPID_LIFETIME,
        "sub": CONTACT,
    }
    assert claims(mozilla, signer)["aud"] == "https://updates.push.services.mozilla.com"
    assert renewed != fcm
    assert claims(renewed, signer)["exp"] == int(now[0]) + VAPID_LIFETIME


async def test_a_push_signed_with_another_key_than_the_subscription_s_fails(
    service: WebPushEmulator, browser: Subscription
) -> None:
    other = webpush(service, vapid_private_key=vapid_private_key())
    try:
        result = await other.send(push(browser))
    finally:
        await other.close()

    assert result.outcome is Outcome.FAILED
    assert result.error_code == "403"
    assert result.error_message is not None
    assert "VAPID" in result.error_message
    assert service.received == []


async def test_a_push_service_whose_clock_is_past_the_jwt_s_expiry_refuses_it(
    browser: Subscription, channel: WebPushChannel
) -> None:
    async with WebPushEmulator(clock=lambda: NOW + VAPID_LIFETIME) as late:
        subscription = late.subscribe(application_server_key=channel.vapid_public_key)
        client = webpush(late)
        try:
            result = await client.send(push(subscription))
        finally:
            await client.close()

    assert (result.outcome, result.error_code) == (Outcome.FAILED, "403")
    assert result.error_message is not None
    assert "expired" in result.error_message


async def test_apple_style_strictness_refuses_a_localhost_contact() -> None:
    async with WebPushEmulator(clock=lambda: NOW, strict_subject=True) as apple:
        strict = webpush(apple, subject="mailto:admin@localhost")
        fine = webpush(apple)
        try:
            refused = await strict.send(push(apple.subscribe()))
            accepted = await fine.send(push(apple.subscribe()))
        finally:
            await strict.close()
            await fine.close()

    assert (refused.outcome, refused.error_code) == (Outcome.FAILED, "403")
    assert refused.error_message is not None
    assert "BadJwtToken" in refused.error_message
    assert accepted.outcome is Outcome.ACCEPTED


# --- answers (providers.md §6) ----------------------------------------------------------------


async def test_an_unsubscribed_browser_is_a_dead_address(
    channel: WebPushChannel, service: WebPushEmulator, browser: Subscription
) -> None:
    service.unsubscribe(browser.endpoint)

    result = await channel.send(push(browser))

    assert (result.outcome, result.error_code) == (Outcome.DEAD_ADDRESS, "410")


async def test_a_subscription_the_service_does_not_know_is_a_dead_address(
    channel: WebPushChannel, service: WebPushEmulator
) -> None:
    unknown = browser_elsewhere(f"{service.url}/push/never-issued")

    result = await channel.send(push(unknown))

    assert (result.outcome, result.error_code) == (Outcome.DEAD_ADDRESS, "404")


async def test_a_scripted_413_fails_the_message(
    channel: WebPushChannel, service: WebPushEmulator, browser: Subscription
) -> None:
    service.script(browser.endpoint, status=413)

    result = await channel.send(push(browser))

    assert (result.outcome, result.error_code) == (Outcome.FAILED, "413")


async def test_rate_limited_is_retried_after_the_services_delay(
    channel: WebPushChannel, service: WebPushEmulator, browser: Subscription
) -> None:
    service.script(browser.endpoint, status=429, retry_after=120)

    result = await channel.send(push(browser))

    assert (result.outcome, result.error_code, result.retry_after) == (Outcome.RETRY, "429", 120)


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_a_server_error_is_retried(
    channel: WebPushChannel, service: WebPushEmulator, browser: Subscription, status: int
) -> None:
    service.script(browser.endpoint, status=status)

    result = await channel.send(push(browser))

    assert (result.outcome, result.error_code, result.retry_after) == (
        Outcome.RETRY,
        str(status),
        None,
    )


async def test_an_unreachable_push_service_is_retried(browser: Subscription) -> None:
    channel = WebPushChannel(
        vapid_private_key=PRIVATE_KEY,
        subject=CONTACT,
        push_service_url=f"https://127.0.0.1:{closed_port()}",
    )
    try:
        result = await channel.send(push(browser))
    finally:
        await channel.close()

    assert result.outcome is Outcome.RETRY
    assert result.error_message is not None
    assert "unreachable" in result.error_message


# --- one push service for every subscription (the sandbox) ------------------------------------


async def test_a_push_service_url_receives_every_subscription_s_pushes() -> None:
    real = browser_elsewhere("https://fcm.googleapis.com/fcm/send/dXk7:APA91b")
    dead = browser_elsewhere("https://fcm.googleapis.com/fcm/send/dead-1")
    async with WebPushEmulator(clock=lambda: NOW, accept_unknown=True) as sandbox:
        origin = sandbox.url
        channel = WebPushChannel(
            vapid_private_key=PRIVATE_KEY,
            subject=CONTACT,
            push_service_url=sandbox.url,
            ssl_context=sandbox.client_ssl_context(),
            clock=lambda: NOW,
        )
        try:
            accepted = await channel.send(push(real))
            gone = await channel.send(push(dead))
        finally:
            await channel.close()

    assert accepted.outcome is Outcome.ACCEPTED
    [received] = sandbox.received
    # The endpoint's path is kept; the VAPID audience is the emulator it went to.
    assert received.endpoint == f"{origin}/fcm/send/dXk7:APA91b"
    assert received.subject == CONTACT
    assert received.plaintext is None  # the browser's keys are the browser's
    assert (gone.outcome, gone.error_code) == (Outcome.DEAD_ADDRESS, "410")


# --- the emulator refuses what a push service refuses (§10.6) ---------------------------------


async def test_the_emulator_requires_ttl_and_vapid_on_a_restricted_subscription(
    service: WebPushEmulator, browser: Subscription
) -> None:
    async with aiohttp.ClientSession() as session:

        async def post(headers: dict[str, str], body: bytes = b"") -> tuple[int, Any]:
            async with session.post(
                browser.endpoint, data=body, headers=headers, ssl=service.client_ssl_context()
            ) as response:
                return response.status, await response.json()

        no_ttl = await post({})
        unsigned = await post({"TTL": "60"})
        bad_topic = await post({"TTL": "60", "Topic": "not a topic!"})
        bad_urgency = await post({"TTL": "60", "Urgency": "urgent"})

    assert no_ttl == (400, {"code": 400, "error": "Bad Request", "message": "Missing TTL header"})
    assert unsigned[0] == 401
    assert bad_topic[0] == 400
    assert bad_urgency[0] == 400
    assert service.received == []
