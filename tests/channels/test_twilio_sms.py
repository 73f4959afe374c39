"""SMS over Twilio's REST API: the channel against the Twilio emulator, over real sockets.

Every answer of providers.md §3.3 is classified (accepted, retry, dead number, failed); status
callbacks arrive signed, verify with our signature code and Twilio's SDK alike, and map to the
status the delivery engine applies.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import MultiDict
from twilio.request_validator import RequestValidator

from clarion.channels.base import Message, Outcome
from clarion.channels.twilio_sms import (
    SmsStatus,
    TwilioSmsChannel,
    signature,
    status_report,
    verify_signature,
)
from clarion.emulators.twilio import TwilioEmulator
from support import closed_port

ACCOUNT_SID = "AC" + "1" * 32
AUTH_TOKEN = "twilio-auth-token"
SERVICE_SID = "MG" + "2" * 32
NUMBER = "+14155550100"


@dataclass(frozen=True)
class Callback:
    form: dict[str, str]
    signature: str


class CallbackReceiver:
    """Clarion's side of status callbacks: a real endpoint that queues what Twilio posts."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[Callback] = asyncio.Queue()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/sms/status", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        # The URL Clarion gives Twilio, query string included: Twilio signs it as given.
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/sms/status?channel=sms"

    async def close(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def next(self) -> Callback:
        return await asyncio.wait_for(self.received.get(), timeout=5)

    async def statuses(self, count: int) -> list[Callback]:
        return [await self.next() for _ in range(count)]

    async def _receive(self, request: web.Request) -> web.Response:
        form = {name: str(value) for name, value in (await request.post()).items()}
        self.received.put_nowait(Callback(form, request.headers["X-Twilio-Signature"]))
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[CallbackReceiver]:
    receiver = CallbackReceiver()
    await receiver.start()
    yield receiver
    await receiver.close()


@pytest.fixture
async def twilio() -> AsyncIterator[TwilioEmulator]:
    async with TwilioEmulator(accounts={ACCOUNT_SID: AUTH_TOKEN}, callback_delay=0) as emulator:
        yield emulator


@pytest.fixture
async def channel(
    twilio: TwilioEmulator, receiver: CallbackReceiver
) -> AsyncIterator[TwilioSmsChannel]:
    channel = TwilioSmsChannel(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        messaging_service_sid=SERVICE_SID,
        base_url=twilio.url,
        status_callback=receiver.url,
    )
    yield channel
    await channel.close()


def sms(to: str = NUMBER, **payload: Any) -> Message:
    return Message(key="delivery-1", address=to, payload={"body": "Your code is 1234", **payload})


# --- sending ------------------------------------------------------------------------------------


async def test_accepted_message_is_identified_by_its_sm_sid(
    channel: TwilioSmsChannel, twilio: TwilioEmulator, receiver: CallbackReceiver
) -> None:
    result = await channel.send(sms())

    assert result.outcome is Outcome.ACCEPTED
    assert result.provider_ref is not None
    assert re.fullmatch(r"SM[0-9a-f]{32}", result.provider_ref)
    [sent] = twilio.messages
    assert sent.sid == result.provider_ref
    assert sent.params == {
        "To": [NUMBER],
        "MessagingServiceSid": [SERVICE_SID],
        "Body": ["Your code is 1234"],
        "StatusCallback": [receiver.url],
    }


async def test_a_from_number_replaces_the_messaging_service(twilio: TwilioEmulator) -> None:
    channel = TwilioSmsChannel(
        account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, from_="+15005550006", base_url=twilio.url
    )
    try:
        result = await channel.send(sms())
    finally:
        await channel.close()

    assert result.outcome is Outcome.ACCEPTED
    [sent] = twilio.messages
    assert sent.params == {"To": [NUMBER], "From": ["+15005550006"], "Body": ["Your code is 1234"]}


def test_a_channel_needs_exactly_one_sender() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        TwilioSmsChannel(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN)
    with pytest.raises(ValueError, match="exactly one"):
        TwilioSmsChannel(
            account_sid=ACCOUNT_SID,
            auth_token=AUTH_TOKEN,
            messaging_service_sid=SERVICE_SID,
            from_="+15005550006",
        )


async def test_media_urls_max_price_and_own_callback_are_sent(
    channel: TwilioSmsChannel, twilio: TwilioEmulator
) -> None:
    media = ["https://example.com/a.png", "https://example.com/b.png"]
    message = sms(media_urls=media, max_price="0.05", status_callback="https://example.com/cb")

    assert (await channel.send(message)).outcome is Outcome.ACCEPTED

    [sent] = twilio.messages
    assert sent.media_urls == media
    assert sent.params["MaxPrice"] == ["0.05"]
    assert sent.status_callback == "https://example.com/cb"


@pytest.mark.parametrize(
    ("expires_in", "validity_period"),
    [(timedelta(days=2), "36000"), (timedelta(seconds=-5), "1")],
)
async def test_expiry_becomes_a_validity_period_within_twilios_range(
    channel: TwilioSmsChannel,
    twilio: TwilioEmulator,
    expires_in: timedelta,
    validity_period: str,
) -> None:
    message = Message(
        key="delivery-1",
        address=NUMBER,
        payload={"body": "hi"},
        expires_at=datetime.now(UTC) + expires_in,
    )

    await channel.send(message)

    assert twilio.messages[0].params["ValidityPeriod"] == [validity_period]


# --- classification (providers.md §3.3) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "code"),
    [
        ("+15005550001", "21211"),  # invalid number
        ("+15005550004", "21610"),  # replied STOP
        ("+15005550009", "21614"),  # cannot receive SMS
        ("4155550100", "21211"),  # not E.164
    ],
)
async def test_numbers_twilio_refuses_are_dead_addresses(
    channel: TwilioSmsChannel, twilio: TwilioEmulator, number: str, code: str
) -> None:
    result = await channel.send(sms(to=number))

    assert result.outcome is Outcome.DEAD_ADDRESS
    assert result.error_code == code
    assert result.error_message
    assert twilio.messages == []


async def test_a_wrong_auth_token_fails_with_20003(twilio: TwilioEmulator) -> None:
    channel = TwilioSmsChannel(
        account_sid=ACCOUNT_SID,
        auth_token="not-the-token",
        messaging_service_sid=SERVICE_SID,
        base_url=twilio.url,
    )
    try:
        result = await channel.send(sms())
    finally:
        await channel.close()

    assert result.outcome is Outcome.FAILED
    assert (result.error_code, result.error_message) == ("20003", "Authenticate")


@pytest.mark.parametrize(
    ("payload", "code"),
    [({"body": "x" * 1601}, "21617"), ({}, "21602")],
    ids=["body over 1600 characters", "no body"],
)
async def test_a_message_twilio_cannot_send_as_it_is_fails(
    channel: TwilioSmsChannel, payload: dict[str, Any], code: str
) -> None:
    result = await channel.send(Message(key="delivery-1", address=NUMBER, payload=payload))

    assert result.outcome is Outcome.FAILED
    assert result.error_code == code


async def test_too_many_concurrent_requests_is_retried() -> None:
    crowded = TwilioEmulator(accounts={ACCOUNT_SID: AUTH_TOKEN}, max_concurrent=1)
    async with crowded:
        crowded_channel = TwilioSmsChannel(
            account_sid=ACCOUNT_SID,
            auth_token=AUTH_TOKEN,
            messaging_service_sid=SERVICE_SID,
            base_url=crowded.url,
        )
        with crowded.holding_answers():
            first = asyncio.create_task(crowded_channel.send(sms()))
            await crowded.held_request()
            second = await crowded_channel.send(sms())
        first_result = await first
        await crowded_channel.close()

    assert second.outcome is Outcome.RETRY
    assert (second.error_code, second.error_message) == ("20429", "Too Many Requests")
    assert first_result.outcome is Outcome.ACCEPTED


async def test_an_outage_is_retried_after_twilios_delay(
    channel: TwilioSmsChannel, twilio: TwilioEmulator
) -> None:
    with twilio.unavailable(retry_after=30):
        result = await channel.send(sms())

    assert result.outcome is Outcome.RETRY
    assert result.retry_after == 30
    assert result.error_code == "20503"


async def test_an_unreachable_twilio_is_retried() -> None:
    channel = TwilioSmsChannel(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        messaging_service_sid=SERVICE_SID,
        base_url=f"http://127.0.0.1:{closed_port()}",
    )
    try:
        result = await channel.send(sms())
    finally:
        await channel.close()

    assert result.outcome is Outcome.RETRY
    assert result.error_code is None
    assert result.error_message is not None


# --- status callbacks (providers.md §3.2) -------------------------------------------------------


async def test_a_delivered_message_reports_each_status_after_the_first(
    channel: TwilioSmsChannel, receiver: CallbackReceiver
) -> None:
    result = await channel.send(sms())

    callbacks = await receiver.statuses(3)

    reports = [status_report(callback.form) for callback in callbacks]
    assert [callback.form["MessageStatus"] for callback in callbacks] == [
        "queued",
        "sent",
        "delivered",
    ]
    assert [report.status for report in reports] == [
        SmsStatus.IN_FLIGHT,
        SmsStatus.SENT,
        SmsStatus.DELIVERED,
    ]
    assert {report.message_sid for report in reports} == {result.provider_ref}
    assert callbacks[-1].form["MessagingServiceSid"] == SERVICE_SID


async def test_a_scripted_number_ends_undelivered_with_the_carrier_error(
    channel: TwilioSmsChannel, twilio: TwilioEmulator, receiver: CallbackReceiver
) -> None:
    twilio.script(NUMBER, status="undelivered", error_code=30003)

    await channel.send(sms())
    *_, last = await receiver.statuses(3)

    report = status_report(last.form)
    assert report.status is SmsStatus.UNDELIVERED
    assert report.error_code == "30003"
    assert report.error_message == "Unreachable destination handset"


async def test_a_failed_message_is_never_reported_sent(
    channel: TwilioSmsChannel, twilio: TwilioEmulator, receiver: CallbackReceiver
) -> None:
    twilio.script(NUMBER, status="failed", error_code=30001)

    await channel.send(sms())
    callbacks = await receiver.statuses(2)

    assert [status_report(c.form).status for c in callbacks] == [
        SmsStatus.IN_FLIGHT,
        SmsStatus.FAILED,
    ]
    assert callbacks[-1].form["ErrorCode"] == "30001"


async def test_the_emulator_keeps_the_final_status_and_the_callbacks_it_made(
    channel: TwilioSmsChannel, twilio: TwilioEmulator, receiver: CallbackReceiver
) -> None:
    result = await channel.send(sms())
    await receiver.statuses(3)

    auth = {"Authorization": aiohttp.encode_basic_auth(ACCOUNT_SID, AUTH_TOKEN)}
    url = f"{twilio.url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{result.provider_ref}.json"
    async with aiohttp.ClientSession() as session, session.get(url, headers=auth) as response:
        resource = await response.json()
    assert (resource["sid"], resource["status"], resource["to"]) == (
        result.provider_ref,
        "delivered",
        NUMBER,
    )
    assert [c.response_status for c in twilio.callbacks] == [204, 204, 204]


@pytest.mark.parametrize(
    ("twilio_status", "status"),
    [
        ("accepted", SmsStatus.IN_FLIGHT),
        ("scheduled", SmsStatus.IN_FLIGHT),
        ("queued", SmsStatus.IN_FLIGHT),
        ("sending", SmsStatus.IN_FLIGHT),
        ("sent", SmsStatus.SENT),
        ("delivered", SmsStatus.DELIVERED),
        ("read", SmsStatus.DELIVERED),
        ("undelivered", SmsStatus.UNDELIVERED),
        ("failed", SmsStatus.FAILED),
        ("canceled", SmsStatus.FAILED),
    ],
)
def test_every_twilio_status_maps_to_a_delivery_status(
    twilio_status: str, status: SmsStatus
) -> None:
    report = status_report({"MessageSid": "SM1", "MessageStatus": twilio_status})

    assert report.status is status
    assert report.error_code is None


def test_a_callback_without_a_message_sid_is_refused() -> None:
    with pytest.raises(ValueError, match="MessageSid"):
        status_report({"MessageStatus": "delivered"})


# --- X-Twilio-Signature (providers.md §3.4) -----------------------------------------------------


async def test_our_verification_accepts_the_emulators_signed_callbacks(
    channel: TwilioSmsChannel, receiver: CallbackReceiver
) -> None:
    await channel.send(sms())

    for callback in await receiver.statuses(3):
        assert verify_signature(
            receiver.url, callback.form, header=callback.signature, auth_token=AUTH_TOKEN
        )


async def test_a_tampered_callback_is_rejected(
    channel: TwilioSmsChannel, receiver: CallbackReceiver
) -> None:
    await channel.send(sms())
    callback = await receiver.next()

    forged = {**callback.form, "MessageStatus": "delivered"}
    assert not verify_signature(
        receiver.url, forged, header=callback.signature, auth_token=AUTH_TOKEN
    )
    assert not verify_signature(
        receiver.url, callback.form, header=callback.signature, auth_token="another-token"
    )
    assert not verify_signature(
        receiver.url + "&x=1", callback.form, header=callback.signature, auth_token=AUTH_TOKEN
    )


def test_our_signature_is_the_one_twilios_sdk_computes_and_accepts() -> None:
    url = "https://clarion.example.com/sms/status?channel=sms"
    params = MultiDict(
        [
            ("MessageSid", "SM" + "a" * 32),
            ("MessageStatus", "delivered"),
            ("MediaUrl", "https://example.com/b.png"),
            ("MediaUrl", "https://example.com/a.png"),
            ("Body", "héllo ✓"),
        ]
    )
    ours = signature(
        url,
        {
            "MessageSid": params["MessageSid"],
            "MessageStatus": params["MessageStatus"],
            "MediaUrl": params.getall("MediaUrl"),
            "Body": params["Body"],
        },
        AUTH_TOKEN,
    )

    validator = RequestValidator(AUTH_TOKEN)
    assert ours == validator.compute_signature(url, params)
    assert validator.validate(url, params, ours)


def test_the_url_is_accepted_with_or_without_its_default_port() -> None:
    params = {"MessageSid": "SM1", "MessageStatus": "sent"}
    signed_without_port = signature("https://clarion.example.com/cb", params, AUTH_TOKEN)
    signed_with_port = signature("https://clarion.example.com:443/cb", params, AUTH_TOKEN)

    assert verify_signature(
        "https://clarion.example.com:443/cb",
        params,
        header=signed_without_port,
        auth_token=AUTH_TOKEN,
    )
    assert verify_signature(
        "https://clarion.example.com/cb", params, header=signed_with_port, auth_token=AUTH_TOKEN
    )
