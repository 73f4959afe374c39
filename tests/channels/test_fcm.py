"""The FCM HTTP v1 channel against the FCM emulator, over real sockets (providers.md §2, §10.2).

Each answer FCM can give is turned into one outcome: accepted, retry later (with FCM's delay),
dead address (retire the binding) or failed (fix the message or the credential).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import pytest

from clarion.channels.base import Message, Outcome
from clarion.channels.fcm import FcmChannel
from clarion.channels.google_oauth import ServiceAccountTokens
from clarion.emulators.fcm import FcmEmulator

PROJECT = "clarion-test"
NOTIFICATION = {"notification": {"title": "Hello", "body": "World"}, "data": {"k": "v"}}


@pytest.fixture
async def emulator() -> AsyncIterator[FcmEmulator]:
    emulator = FcmEmulator(slow_delay=0.5)
    await emulator.start()
    yield emulator
    await emulator.close()


@pytest.fixture
def service_account(emulator: FcmEmulator) -> dict[str, str]:
    return emulator.new_service_account(PROJECT)


@pytest.fixture
async def channel(
    emulator: FcmEmulator, service_account: dict[str, str]
) -> AsyncIterator[FcmChannel]:
    channel = FcmChannel(service_account=service_account, base_url=emulator.url)
    yield channel
    await channel.close()


def message(address: str = "device-1", **fields: Any) -> Message:
    fields.setdefault("payload", NOTIFICATION)
    return Message(key="delivery-1", address=address, **fields)


async def test_accepted_message_is_referenced_by_its_fcm_name(
    channel: FcmChannel, emulator: FcmEmulator
) -> None:
    result = await channel.send(message())

    assert result.outcome is Outcome.ACCEPTED
    [received] = emulator.received
    assert result.provider_ref == received.name
    assert received.name.startswith(f"projects/{PROJECT}/messages/")
    assert received.message["token"] == "device-1"
    assert received.message["notification"] == NOTIFICATION["notification"]
    assert received.message["data"] == {"k": "v"}


async def test_priority_and_expiry_become_android_priority_and_ttl(
    channel: FcmChannel, emulator: FcmEmulator
) -> None:
    expires_at = datetime.now(UTC) + timedelta(hours=1)

    await channel.send(message(priority="low", expires_at=expires_at))
    await channel.send(message(priority="high"))

    low, high = (received.message["android"] for received in emulator.received)
    assert low["priority"] == "NORMAL"
    assert 3590 <= int(low["ttl"].removesuffix("s")) <= 3600
    assert high == {"priority": "HIGH"}


async def test_naive_expiry_is_read_as_utc_like_the_store_keeps_it(
    channel: FcmChannel, emulator: FcmEmulator
) -> None:
    expires_at = datetime.now(UTC).replace(tzinfo=None) + timedelta(minutes=10)

    await channel.send(message(expires_at=expires_at))

    assert 590 <= int(emulator.received[0].message["android"]["ttl"].removesuffix("s")) <= 600


async def test_android_settings_of_the_payload_win(
    channel: FcmChannel, emulator: FcmEmulator
) -> None:
    android = {"priority": "HIGH", "ttl": "60s", "collapse_key": "score"}
    expires_at = datetime.now(UTC) + timedelta(hours=1)

    await channel.send(message(payload={"android": android}, priority="low", expires_at=expires_at))

    assert emulator.received[0].message["android"] == android


async def test_no_collapse_key_unless_the_payload_sets_one(
    channel: FcmChannel, emulator: FcmEmulator
) -> None:
    await channel.send(message())

    assert "collapse_key" not in emulator.received[0].message["android"]


async def test_unregistered_token_is_a_dead_address(channel: FcmChannel) -> None:
    result = await channel.send(message("dead-device"))

    assert result.outcome is Outcome.DEAD_ADDRESS
    assert result.error_code == "UNREGISTERED"
    assert result.error_message is not None
    assert "no longer registered" in result.error_message


async def test_invalid_registration_token_is_a_dead_address(channel: FcmChannel) -> None:
    result = await channel.send(message("bad-device"))

    assert result.outcome is Outcome.DEAD_ADDRESS
    assert result.error_code == "INVALID_ARGUMENT"
    assert result.error_message is not None
    assert "not a valid FCM registration token" in result.error_message


async def test_token_of_another_project_is_a_dead_address(
    channel: FcmChannel, emulator: FcmEmulator
) -> None:
    emulator.script("other-project-device", "SENDER_ID_MISMATCH")

    result = await channel.send(message("other-project-device"))

    assert result.outcome is Outcome.DEAD_ADDRESS
    assert result.error_code == "SENDER_ID_MISMATCH"


@pytest.mark.parametrize(
    ("error", "retry_after", "expected_delay"),
    [
        ("QUOTA_EXCEEDED", "120", 120.0),
        ("UNAVAILABLE", "7", 7.0),
        ("INTERNAL", None, None),
    ],
)
async def test_throttling_and_outages_are_retried_after_the_delay_fcm_asks(
    channel: FcmChannel,
    emulator: FcmEmulator,
    error: str,
    retry_after: str | None,
    expected_delay: float | None,
) -> None:
    emulator.script("device-1", error, retry_after=retry_after)

    result = await channel.send(message())

    assert result.outcome is Outcome.RETRY
    assert result.retry_after == expected_delay
    assert result.error_code == error


async def test_retry_after_may_be_an_http_date(channel: FcmChannel, emulator: FcmEmulator) -> None:
    later = datetime.now(UTC) + timedelta(minutes=5)
    emulator.script("device-1", "UNAVAILABLE", retry_after=format_datetime(later, usegmt=True))

    result = await channel.send(message())

    assert result.outcome is Outcome.RETRY
    assert result.retry_after is not None
    assert 290 <= result.retry_after <= 300


async def test_quota_exceeded_without_retry_after_waits_the_documented_minute(
    channel: FcmChannel, emulator: FcmEmulator
) -> None:
    emulator.script("device-1", "QUOTA_EXCEEDED")

    result = await channel.send(message())

    assert result.outcome is Outcome.RETRY
    assert result.retry_after == 60.0


async def test_a_scripted_error_can_clear_after_some_sends(
    channel: FcmChannel, emulator: FcmEmulator
) -> None:
    emulator.script("device-1", "UNAVAILABLE", times=1)

    first, second = [await channel.send(message()) for _ in range(2)]

    assert (first.outcome, second.outcome) == (Outcome.RETRY, Outcome.ACCEPTED)


async def test_exhausted_project_quota_is_retried_when_it_refills() -> None:
    emulator = FcmEmulator(quota_per_minute=2)
    await emulator.start()
    channel = FcmChannel(service_account=emulator.new_service_account(), base_url=emulator.url)
    try:
        results = [await channel.send(message()) for _ in range(3)]
    finally:
        await channel.close()
        await emulator.close()

    assert [result.outcome for result in results] == [Outcome.ACCEPTED] * 2 + [Outcome.RETRY]
    assert results[2].error_code == "QUOTA_EXCEEDED"
    # Two messages a minute: one more fits in 30 s.
    assert results[2].retry_after == 30.0


async def test_broken_apns_credential_of_the_firebase_project_fails(
    channel: FcmChannel, emulator: FcmEmulator
) -> None:
    emulator.script("ios-device", "THIRD_PARTY_AUTH_ERROR")

    result = await channel.send(message("ios-device"))

    assert result.outcome is Outcome.FAILED
    assert result.error_code == "THIRD_PARTY_AUTH_ERROR"
    # The 401 is about the APNs key, not our access token: no second grant.
    assert len(emulator.grants) == 1


async def test_invalid_message_fails(channel: FcmChannel, emulator: FcmEmulator) -> None:
    result = await channel.send(message(payload={"data": {"count": 3}}))

    assert result.outcome is Outcome.FAILED
    assert result.error_code == "INVALID_ARGUMENT"
    assert result.error_message is not None
    assert "message.data[0].value" in result.error_message
    assert emulator.received == []


async def test_payload_too_large_is_refused_before_sending(
    channel: FcmChannel, emulator: FcmEmulator
) -> None:
    result = await channel.send(message(payload={"data": {"blob": "x" * 4096}}))

    assert result.outcome is Outcome.FAILED
    assert result.error_message is not None
    assert result.error_message.startswith("payload too large")
    assert emulator.grants == []
    assert emulator.received == []


async def test_access_token_is_reused_across_sends(
    channel: FcmChannel, emulator: FcmEmulator
) -> None:
    for _ in range(3):
        assert (await channel.send(message())).outcome is Outcome.ACCEPTED

    assert len(emulator.grants) == 1


async def test_concurrent_sends_share_one_token_grant(
    channel: FcmChannel, emulator: FcmEmulator
) -> None:
    results = await asyncio.gather(*(channel.send(message(f"device-{n}")) for n in range(50)))

    assert {result.outcome for result in results} == {Outcome.ACCEPTED}
    assert len(emulator.grants) == 1


async def test_access_token_is_granted_again_when_it_expires(
    channel: FcmChannel, emulator: FcmEmulator
) -> None:
    emulator.token_lifetime = 1
    await channel.send(message())

    await asyncio.sleep(1)  # the shortest lifetime OAuth can express
    result = await channel.send(message())

    assert result.outcome is Outcome.ACCEPTED
    assert len(emulator.grants) == 2


async def test_refused_access_token_is_replaced_once_and_the_send_succeeds(
    channel: FcmChannel, emulator: FcmEmulator
) -> None:
    await channel.send(message())
    emulator.revoke_tokens()

    result = await channel.send(message())

    assert result.outcome is Outcome.ACCEPTED
    assert len(emulator.grants) == 2
    assert len(emulator.received) == 2


async def test_access_token_refused_again_after_a_fresh_grant_fails(
    channel: FcmChannel, emulator: FcmEmulator
) -> None:
    emulator.token_lifetime = 0

    result = await channel.send(message())

    assert result.outcome is Outcome.FAILED
    assert result.error_code == "UNAUTHENTICATED"
    assert len(emulator.grants) == 2


async def test_sending_for_a_project_the_service_account_may_not_use_fails(
    emulator: FcmEmulator, service_account: dict[str, str]
) -> None:
    channel = FcmChannel(
        service_account={**service_account, "project_id": "someone-else"}, base_url=emulator.url
    )
    try:
        result = await channel.send(message())
    finally:
        await channel.close()

    assert result.outcome is Outcome.FAILED
    assert result.error_code == "PERMISSION_DENIED"


async def test_service_account_google_refuses_fails(emulator: FcmEmulator) -> None:
    account = emulator.new_service_account(PROJECT)
    impostor = {**account, "private_key": emulator.new_service_account(PROJECT)["private_key"]}
    channel = FcmChannel(service_account=impostor, base_url=emulator.url)
    try:
        result = await channel.send(message())
    finally:
        await channel.close()

    assert result.outcome is Outcome.FAILED
    assert result.error_code == "invalid_grant"
    assert emulator.grants == []


async def test_unreachable_token_endpoint_is_retried(
    emulator: FcmEmulator, service_account: dict[str, str]
) -> None:
    account = {**service_account, "token_uri": "http://127.0.0.1:1/token"}
    channel = FcmChannel(service_account=account, base_url=emulator.url)
    try:
        result = await channel.send(message())
    finally:
        await channel.close()

    assert result.outcome is Outcome.RETRY


async def test_unreachable_fcm_is_retried(service_account: dict[str, str]) -> None:
    channel = FcmChannel(service_account=service_account, base_url="http://127.0.0.1:1")
    try:
        result = await channel.send(message())
    finally:
        await channel.close()

    assert result.outcome is Outcome.RETRY


async def test_answer_later_than_the_timeout_is_retried(
    emulator: FcmEmulator, service_account: dict[str, str]
) -> None:
    channel = FcmChannel(service_account=service_account, base_url=emulator.url, timeout=0.1)
    try:
        result = await channel.send(message("slow-device"))
    finally:
        await channel.close()

    assert result.outcome is Outcome.RETRY
    assert emulator.received == []


async def test_slow_token_is_answered_after_the_delay(
    channel: FcmChannel, emulator: FcmEmulator
) -> None:
    result = await channel.send(message("slow-device"))

    assert result.outcome is Outcome.ACCEPTED


# The emulator's own protocol surface, beyond what the channel exercises.


async def post_send(
    emulator: FcmEmulator, channel_token: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{emulator.url}/v1/projects/{PROJECT}/messages:send",
            json=body,
            headers={"Authorization": f"Bearer {channel_token}"},
        ) as response,
    ):
        return response.status, await response.json()


@pytest.fixture
async def access_token(emulator: FcmEmulator, service_account: dict[str, str]) -> str:
    async with aiohttp.ClientSession() as session:
        return await ServiceAccountTokens(service_account).access_token(session)


async def test_emulator_requires_exactly_one_target(
    emulator: FcmEmulator, access_token: str
) -> None:
    status, body = await post_send(
        emulator, access_token, {"message": {"topic": "a", "token": "b"}}
    )

    assert status == 400
    assert body["error"]["status"] == "INVALID_ARGUMENT"
    [fcm_error, bad_request] = body["error"]["details"]
    assert fcm_error == {
        "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
        "errorCode": "INVALID_ARGUMENT",
    }
    assert bad_request["fieldViolations"][0]["field"] == "message"


async def test_emulator_honours_validate_only(emulator: FcmEmulator, access_token: str) -> None:
    status, body = await post_send(
        emulator, access_token, {"message": {"token": "device-1"}, "validate_only": True}
    )

    assert (status, body) == (200, {"name": f"projects/{PROJECT}/messages/fake_message_id"})
    assert emulator.received == []


async def test_emulator_requires_an_access_token(emulator: FcmEmulator) -> None:
    status, body = await post_send(emulator, "not-a-token", {"message": {"token": "device-1"}})

    assert status == 401
    assert body["error"]["status"] == "UNAUTHENTICATED"


@pytest.mark.parametrize("path", ["/fcm/send", "/batch"])
async def test_emulator_has_no_legacy_apis(emulator: FcmEmulator, path: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{emulator.url}{path}", json={}) as response,
    ):
        assert response.status == 404
