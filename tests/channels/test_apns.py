"""The APNs channel against the APNs emulator, over real TLS and HTTP/2 sockets.

Each test gets its own emulator (own CA, port and records) and channels aimed at it. What the
channel must do is in reference/providers.md §1: every header, the 4 KB limit, ES256 provider
tokens renewed within Apple's window, each answer classified, and no hang whatever the server
does with its stream limit, its flow-control window or its connection.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clarion.channels.apns import PRODUCTION_URL, SANDBOX_URL, ApnsChannel
from clarion.channels.base import Message, Outcome, Result
from clarion.emulators.apns import ApnsEmulator, Reply

KEY_ID = "ABC123DEFG"
TEAM_ID = "DEF123GHIJ"
BUNDLE_ID = "com.example.clarion"
TOKEN = "ab" * 32
ALERT = {"aps": {"alert": {"title": "Hello", "body": "from Clarion"}}}
MINUTES = 60.0

T = TypeVar("T")


@dataclass(frozen=True)
class SigningKey:
    private_pem: bytes
    public_pem: bytes


def new_signing_key() -> SigningKey:
    key = ec.generate_private_key(ec.SECP256R1())
    return SigningKey(
        private_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        public_pem=key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )


class Clock:
    """Time that moves only when a test says so, to age provider tokens without waiting."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def signing_key() -> SigningKey:
    return new_signing_key()


@pytest.fixture
async def emulator(signing_key: SigningKey) -> AsyncIterator[ApnsEmulator]:
    emulator = ApnsEmulator(slow_delay=0.2)
    emulator.register_key(key_id=KEY_ID, team_id=TEAM_ID, public_key_pem=signing_key.public_pem)
    await emulator.start()
    yield emulator
    await emulator.close()


MakeChannel = Callable[..., ApnsChannel]


@pytest.fixture
async def make_channel(
    emulator: ApnsEmulator, signing_key: SigningKey
) -> AsyncIterator[MakeChannel]:
    """Channels aimed at the emulator; token auth with the registered key unless told otherwise."""
    channels: list[ApnsChannel] = []

    def make(**options: Any) -> ApnsChannel:
        if "certificate" not in options:
            options = {
                "key_id": KEY_ID,
                "team_id": TEAM_ID,
                "bundle_id": BUNDLE_ID,
                "private_key": signing_key.private_pem,
                **options,
            }
        channel = ApnsChannel(
            base_url=emulator.url, ssl_context=emulator.client_ssl_context(), **options
        )
        channels.append(channel)
        return channel

    yield make
    for channel in channels:
        await channel.close()


@pytest.fixture
def channel(make_channel: MakeChannel) -> ApnsChannel:
    return make_channel()


def message(address: str = TOKEN, **fields: Any) -> Message:
    fields.setdefault("key", str(uuid.uuid4()))
    fields.setdefault("payload", ALERT)
    return Message(address=address, **fields)


async def bounded(awaitable: Awaitable[T]) -> T:
    """The bound only turns a hang into a failure; nothing is timed."""
    async with asyncio.timeout(15):
        return await awaitable


async def settle(*sends: Awaitable[Result]) -> list[Result]:
    return list(await bounded(asyncio.gather(*sends)))


def outcomes(results: list[Result]) -> dict[Outcome, int]:
    counts: dict[Outcome, int] = {}
    for result in results:
        counts[result.outcome] = counts.get(result.outcome, 0) + 1
    return counts


# What is sent


async def test_accepted_notification_carries_every_apns_header(
    channel: ApnsChannel, emulator: ApnsEmulator
) -> None:
    sent = message(priority="high", expires_at=datetime(2030, 1, 1))  # naive means UTC

    result = await channel.send(sent)

    assert result == Result(outcome=Outcome.ACCEPTED, provider_ref=sent.key)
    [received] = emulator.accepted
    assert received.token == TOKEN
    assert received.json() == ALERT
    assert received.headers["authorization"].startswith("bearer ")
    assert received.headers["apns-topic"] == BUNDLE_ID
    assert received.headers["apns-push-type"] == "alert"
    assert received.headers["apns-priority"] == "10"
    assert received.headers["apns-expiration"] == "1893456000"
    assert received.headers["apns-id"] == sent.key


async def test_key_that_is_not_a_uuid_lets_apns_choose_the_id(
    channel: ApnsChannel, emulator: ApnsEmulator
) -> None:
    result = await channel.send(message(key="NTa1b2c3-BSd4e5f6"))

    assert result.outcome is Outcome.ACCEPTED
    assert result.provider_ref is not None
    assert str(uuid.UUID(result.provider_ref)) == result.provider_ref
    assert "apns-id" not in emulator.accepted[0].headers


async def test_content_available_alone_is_a_background_push_at_priority_5(
    channel: ApnsChannel, emulator: ApnsEmulator
) -> None:
    silent = {"aps": {"content-available": 1}, "sync": "inbox"}

    result = await channel.send(message(payload=silent, priority="high"))

    assert result.outcome is Outcome.ACCEPTED
    headers = emulator.accepted[0].headers
    assert (headers["apns-push-type"], headers["apns-priority"]) == ("background", "5")
    assert "apns-expiration" not in headers


async def test_low_priority_alert_is_sent_at_priority_5(
    channel: ApnsChannel, emulator: ApnsEmulator
) -> None:
    await channel.send(message(priority="low"))

    headers = emulator.accepted[0].headers
    assert (headers["apns-push-type"], headers["apns-priority"]) == ("alert", "5")


async def test_payload_over_4096_bytes_fails_without_being_sent(
    channel: ApnsChannel, emulator: ApnsEmulator
) -> None:
    result = await channel.send(message(payload={"aps": {"alert": "x" * 4096}}))

    assert result.outcome is Outcome.FAILED
    assert result.error_code == "PayloadTooLarge"
    assert emulator.requests == 0


# How answers are classified (providers.md §1.5)


@pytest.mark.parametrize(
    ("address", "script", "reason"),
    [
        ("dead-token", None, "Unregistered"),
        ("bad-token", None, "BadDeviceToken"),
        (TOKEN, Reply(status=410, reason="ExpiredToken"), "ExpiredToken"),
        (TOKEN, Reply(status=400, reason="DeviceTokenNotForTopic"), "DeviceTokenNotForTopic"),
    ],
)
async def test_token_apns_no_longer_accepts_is_a_dead_address(
    channel: ApnsChannel,
    emulator: ApnsEmulator,
    address: str,
    script: Reply | None,
    reason: str,
) -> None:
    if script is not None:
        emulator.scripts[address] = script

    result = await channel.send(message(address))

    assert result.outcome is Outcome.DEAD_ADDRESS
    assert result.error_code == reason
    assert result.error_message


async def test_unregistered_token_says_since_when_apns_knows(channel: ApnsChannel) -> None:
    result = await channel.send(message("dead-token"))

    assert result.error_message is not None
    assert f"since {datetime.now(UTC):%Y-}" in result.error_message


@pytest.mark.parametrize(
    ("reply", "retry_after"),
    [
        (Reply(status=429, reason="TooManyRequests", retry_after=30), 30.0),
        (Reply(status=500, reason="InternalServerError"), None),
        (Reply(status=503, reason="ServiceUnavailable", retry_after=120), 120.0),
        (Reply(status=503, reason="Shutdown"), None),
        (Reply(status=400, reason="IdleTimeout"), None),
    ],
)
async def test_transient_answer_is_retried_after_the_providers_delay(
    channel: ApnsChannel, emulator: ApnsEmulator, reply: Reply, retry_after: float | None
) -> None:
    emulator.scripts[TOKEN] = reply

    result = await channel.send(message())

    assert result.outcome is Outcome.RETRY
    assert result.error_code == reply.reason
    assert result.retry_after == retry_after


@pytest.mark.parametrize(
    "reply",
    [Reply(status=400, reason="TopicDisallowed"), Reply(status=403, reason="Forbidden")],
)
async def test_other_refusal_fails_the_message(
    channel: ApnsChannel, emulator: ApnsEmulator, reply: Reply
) -> None:
    emulator.scripts[TOKEN] = reply

    result = await channel.send(message())

    assert result.outcome is Outcome.FAILED
    assert result.error_code == reply.reason


async def test_key_apns_does_not_know_fails_as_invalid_provider_token(
    make_channel: MakeChannel,
) -> None:
    channel = make_channel(private_key=new_signing_key().private_pem)

    result = await channel.send(message())

    assert result.outcome is Outcome.FAILED
    assert result.error_code == "InvalidProviderToken"


# Provider tokens (providers.md §1.2)


async def test_provider_token_is_reused_across_sends(
    channel: ApnsChannel, emulator: ApnsEmulator
) -> None:
    results = await settle(*(channel.send(message()) for _ in range(5)))

    assert outcomes(results) == {Outcome.ACCEPTED: 5}
    assert len(emulator.provider_tokens) == 1


async def test_provider_token_is_renewed_after_its_lifetime(
    make_channel: MakeChannel, emulator: ApnsEmulator
) -> None:
    clock = Clock()
    emulator.clock = clock
    channel = make_channel(clock=clock)

    first = await channel.send(message())
    clock.advance(41 * MINUTES)
    second = await channel.send(message())

    assert (first.outcome, second.outcome) == (Outcome.ACCEPTED, Outcome.ACCEPTED)
    assert len(emulator.provider_tokens) == 2


async def test_token_apns_calls_expired_is_renewed_and_the_send_repeated_once(
    make_channel: MakeChannel, emulator: ApnsEmulator
) -> None:
    ours, apples = Clock(), Clock()
    emulator.clock = apples
    channel = make_channel(clock=ours)
    await channel.send(message())
    ours.advance(30 * MINUTES)  # within the 40-minute lifetime: the token is reused…
    apples.advance(61 * MINUTES)  # …but APNs finds it over an hour old

    result = await channel.send(message())

    assert result.outcome is Outcome.ACCEPTED
    assert len(emulator.provider_tokens) == 2
    assert emulator.requests == 3


async def test_token_is_not_renewed_sooner_than_apple_allows(
    make_channel: MakeChannel, emulator: ApnsEmulator
) -> None:
    emulator.clock = lambda: time.time() + 61 * MINUTES  # APNs' clock is an hour ahead of ours
    channel = make_channel()

    result = await channel.send(message())

    assert result.outcome is Outcome.FAILED
    assert result.error_code == "ExpiredProviderToken"
    assert emulator.requests == 1


def test_token_lifetime_outside_apples_window_is_refused(signing_key: SigningKey) -> None:
    with pytest.raises(ValueError, match="20 to 60 minutes"):
        ApnsChannel(
            key_id=KEY_ID,
            team_id=TEAM_ID,
            bundle_id=BUNDLE_ID,
            private_key=signing_key.private_pem,
            token_lifetime=5 * MINUTES,
        )


# Certificate auth and hosts


async def test_certificate_auth_pushes_to_the_certificates_topic(
    make_channel: MakeChannel, emulator: ApnsEmulator
) -> None:
    certificate = emulator.issue_client_certificate("com.example.certified")
    channel = make_channel(
        certificate=certificate.certificate_pem, private_key=certificate.private_key_pem
    )

    result = await channel.send(message())

    assert result.outcome is Outcome.ACCEPTED
    headers = emulator.accepted[0].headers
    assert headers["apns-topic"] == "com.example.certified"
    assert "authorization" not in headers


@pytest.mark.parametrize(("sandbox", "url"), [(True, SANDBOX_URL), (False, PRODUCTION_URL)])
def test_sandbox_flag_selects_apples_host(signing_key: SigningKey, sandbox: bool, url: str) -> None:
    channel = ApnsChannel(
        key_id=KEY_ID,
        team_id=TEAM_ID,
        bundle_id=BUNDLE_ID,
        private_key=signing_key.private_pem,
        sandbox=sandbox,
    )

    assert channel.url == url


# Connections under stress: none of these may hang (providers.md §1.6, §8.2)


async def test_stream_limit_lowered_mid_connection_lets_every_send_finish(
    make_channel: MakeChannel, emulator: ApnsEmulator
) -> None:
    channel = make_channel(max_connections=1)
    in_flight = [asyncio.create_task(channel.send(message(f"slow-{i}"))) for i in range(50)]
    await bounded(emulator.wait_until_held(50))

    emulator.set_max_concurrent_streams(1)
    results = await settle(*in_flight, *(channel.send(message()) for _ in range(50)))

    assert outcomes(results) == {Outcome.ACCEPTED: 100}
    assert emulator.protocol_errors == []


async def test_stream_limit_dropping_to_one_after_each_rejection_does_not_hang(
    channel: ApnsChannel, emulator: ApnsEmulator
) -> None:
    emulator.lower_limit_after_errors = True
    addresses = [f"bad-{i}" if i % 3 == 0 else f"{i:064x}" for i in range(300)]

    results = await settle(*(channel.send(message(address)) for address in addresses))

    assert outcomes(results) == {Outcome.DEAD_ADDRESS: 100, Outcome.ACCEPTED: 200}
    assert emulator.protocol_errors == []


async def test_error_bodies_beyond_the_64_kib_window_do_not_stall_the_connection(
    make_channel: MakeChannel,
) -> None:
    channel = make_channel(max_connections=1)

    # 3,000 bodies of 27 bytes ({"reason":"BadDeviceToken"}): 81 KB on one connection.
    results = await settle(*(channel.send(message(f"bad-{i}")) for i in range(3000)))

    assert outcomes(results) == {Outcome.DEAD_ADDRESS: 3000}


async def test_goaway_mid_traffic_answers_the_streams_kept_and_retries_the_others(
    make_channel: MakeChannel, emulator: ApnsEmulator
) -> None:
    channel = make_channel(max_connections=1)
    in_flight = [asyncio.create_task(channel.send(message(f"slow-{i}"))) for i in range(20)]
    await bounded(emulator.wait_until_held(20))

    emulator.goaway("Shutdown", last_stream_id=19)  # streams 1, 3 … 19: the first ten
    results = await settle(*in_flight)

    assert outcomes(results) == {Outcome.ACCEPTED: 10, Outcome.RETRY: 10}
    assert {r.error_code for r in results if r.outcome is Outcome.RETRY} == {"Shutdown"}
    assert (await channel.send(message())).outcome is Outcome.ACCEPTED  # on a new connection


async def test_connection_reset_mid_flight_is_retried_and_the_next_send_reconnects(
    channel: ApnsChannel, emulator: ApnsEmulator
) -> None:
    in_flight = [asyncio.create_task(channel.send(message(f"slow-{i}"))) for i in range(5)]
    await bounded(emulator.wait_until_held(5))

    emulator.drop_connections()
    results = await settle(*in_flight)

    assert outcomes(results) == {Outcome.RETRY: 5}
    assert (await channel.send(message())).outcome is Outcome.ACCEPTED


async def test_unanswered_request_times_out_as_retry_and_frees_its_stream(
    make_channel: MakeChannel, emulator: ApnsEmulator
) -> None:
    emulator.max_concurrent_streams = 1
    emulator.scripts["silent"] = Reply(delay=math.inf)
    channel = make_channel(timeout=0.2, max_connections=1)

    timed_out = await channel.send(message("silent"))
    after = await channel.send(message())  # needs the one stream the silent request held

    assert (timed_out.outcome, timed_out.error_code) == (Outcome.RETRY, "Timeout")
    assert after.outcome is Outcome.ACCEPTED
