"""Facebook Messenger: the channel against the Send API emulator, over real sockets.

Every Graph error of providers.md §5.2 is classified (accepted, retry, dead recipient, failed),
the 24-hour window and message tags behave as Messenger documents them, and the delivery
webhooks the emulator posts verify with our X-Hub-Signature-256 check.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web

from clarion.channels.base import Message, Outcome
from clarion.channels.messenger import (
    MessengerChannel,
    delivery_events,
    verify_webhook_signature,
)
from clarion.emulators.messenger import MessengerEmulator
from support import closed_port

PAGE_ID = "1122334455"
PAGE_TOKEN = "page-access-token"
APP_SECRET = "app-secret"
VERIFY_TOKEN = "verify-me"
PSID = "2400000000000001"


@pytest.fixture
async def graph() -> AsyncIterator[MessengerEmulator]:
    async with MessengerEmulator(pages={PAGE_ID: PAGE_TOKEN}) as emulator:
        yield emulator


def messenger(emulator: MessengerEmulator, **options: Any) -> MessengerChannel:
    settings = {"page_id": PAGE_ID, "page_access_token": PAGE_TOKEN, **options}
    return MessengerChannel(base_url=emulator.url, **settings)


@pytest.fixture
async def channel(graph: MessengerEmulator) -> AsyncIterator[MessengerChannel]:
    channel = messenger(graph)
    yield channel
    await channel.close()


def text(to: str = PSID, **envelope: Any) -> Message:
    return Message(key="delivery-1", address=to, payload={"text": "Your order shipped", **envelope})


def hours_ago(hours: float) -> datetime:
    return datetime.now(UTC) - timedelta(hours=hours)


# --- sending ------------------------------------------------------------------------------------


async def test_a_text_is_accepted_and_identified_by_its_message_id(
    channel: MessengerChannel, graph: MessengerEmulator
) -> None:
    result = await channel.send(text())

    assert result.outcome is Outcome.ACCEPTED
    [received] = graph.messages
    assert result.provider_ref == received.message_id
    assert received.message_id.startswith("m_")
    assert received.recipient == {"id": PSID}
    assert received.message == {"text": "Your order shipped"}
    assert (received.messaging_type, received.tag) == ("UPDATE", None)


async def test_a_full_message_object_is_sent_as_given(
    channel: MessengerChannel, graph: MessengerEmulator
) -> None:
    attachment = {"type": "image", "payload": {"url": "https://example.com/a.png"}}
    payload = {"message": {"attachment": attachment}, "messaging_type": "RESPONSE"}

    await channel.send(Message(key="delivery-1", address=PSID, payload=payload))

    [received] = graph.messages
    assert received.message == {"attachment": attachment}
    assert received.messaging_type == "RESPONSE"


async def test_a_phone_number_recipient_gets_no_recipient_id(
    channel: MessengerChannel, graph: MessengerEmulator
) -> None:
    result = await channel.send(text(to="+14155550100"))

    assert result.outcome is Outcome.ACCEPTED
    assert graph.messages[0].recipient == {"phone_number": "+14155550100"}


async def test_the_page_can_be_addressed_as_me(graph: MessengerEmulator) -> None:
    channel = messenger(graph, page_id="me")
    try:
        result = await channel.send(text())
    finally:
        await channel.close()

    assert result.outcome is Outcome.ACCEPTED
    assert graph.messages[0].page_id == PAGE_ID


# --- classification (providers.md §5.2) ---------------------------------------------------------


async def test_an_unavailable_person_is_a_dead_address(channel: MessengerChannel) -> None:
    result = await channel.send(text(to="dead-2400"))

    assert result.outcome is Outcome.DEAD_ADDRESS
    assert result.error_code == "551/1545041"
    assert result.error_message == "(#551) This person isn't available right now."


async def test_no_matching_user_is_a_dead_address(channel: MessengerChannel) -> None:
    result = await channel.send(text(to="bad-2400"))

    assert result.outcome is Outcome.DEAD_ADDRESS
    assert result.error_code == "100/2018001"


async def test_a_psid_nobody_set_up_matches_no_user_on_a_strict_page() -> None:
    async with MessengerEmulator(pages={PAGE_ID: PAGE_TOKEN}, accept_unknown_psids=False) as graph:
        channel = messenger(graph)
        graph.user_wrote(PSID)
        known = await channel.send(text())
        unknown = await channel.send(text(to="2400000000000099"))
        await channel.close()

    assert known.outcome is Outcome.ACCEPTED
    assert (unknown.outcome, unknown.error_code) == (Outcome.DEAD_ADDRESS, "100/2018001")


async def test_a_bad_page_token_fails(graph: MessengerEmulator) -> None:
    channel = messenger(graph, page_access_token="expired")
    try:
        result = await channel.send(text())
    finally:
        await channel.close()

    assert result.outcome is Outcome.FAILED
    assert result.error_code == "190"
    assert graph.messages == []


@pytest.mark.parametrize(
    ("code", "subcode", "error_code"),
    [
        (1, None, "1"),  # unknown error
        (2, None, "2"),  # unexpected error, retry later
        (4, None, "4"),  # application request limit
        (613, None, "613"),  # rate limit
        (1200, None, "1200"),  # temporary send failure
    ],
)
async def test_transient_errors_and_rate_limits_are_retried(
    channel: MessengerChannel,
    graph: MessengerEmulator,
    code: int,
    subcode: int | None,
    error_code: str,
) -> None:
    graph.script(PSID, code=code, subcode=subcode)

    result = await channel.send(text())

    assert result.outcome is Outcome.RETRY
    assert result.error_code == error_code


async def test_a_marketing_frequency_cap_is_not_retried(
    channel: MessengerChannel, graph: MessengerEmulator
) -> None:
    graph.script(PSID, code=4, subcode=2018354)

    result = await channel.send(text())

    assert (result.outcome, result.error_code) == (Outcome.FAILED, "4/2018354")


async def test_the_page_rate_cap_answers_613_which_is_retried() -> None:
    async with MessengerEmulator(
        pages={PAGE_ID: PAGE_TOKEN}, rate_limit=1, rate_window=60
    ) as graph:
        channel = messenger(graph)
        first = await channel.send(text())
        second = await channel.send(text())
        await channel.close()

    assert first.outcome is Outcome.ACCEPTED
    assert (second.outcome, second.error_code) == (Outcome.RETRY, "613")


async def test_a_slow_recipient_is_answered_after_the_delay() -> None:
    async with MessengerEmulator(pages={PAGE_ID: PAGE_TOKEN}, slow_delay=0.01) as graph:
        channel = messenger(graph)
        result = await channel.send(text(to="slow-2400"))
        await channel.close()

    assert result.outcome is Outcome.ACCEPTED


async def test_an_unanswered_request_is_retried(graph: MessengerEmulator) -> None:
    channel = messenger(graph, timeout=0.05)
    try:
        result = await channel.send(text(to="slow-2400"))
    finally:
        await channel.close()

    assert result.outcome is Outcome.RETRY
    assert result.error_code is None


async def test_an_unreachable_graph_api_is_retried() -> None:
    channel = MessengerChannel(
        page_id=PAGE_ID, page_access_token=PAGE_TOKEN, base_url=f"http://127.0.0.1:{closed_port()}"
    )
    try:
        result = await channel.send(text())
    finally:
        await channel.close()

    assert result.outcome is Outcome.RETRY


# --- the messaging window (providers.md §5.1) ---------------------------------------------------


async def test_an_update_inside_the_24_hour_window_is_accepted(
    channel: MessengerChannel, graph: MessengerEmulator
) -> None:
    graph.user_wrote(PSID, at=hours_ago(23))

    assert (await channel.send(text())).outcome is Outcome.ACCEPTED


async def test_outside_the_window_an_untagged_message_fails_and_says_to_use_a_tag(
    channel: MessengerChannel, graph: MessengerEmulator
) -> None:
    graph.user_wrote(PSID, at=hours_ago(25))

    result = await channel.send(text())

    assert result.outcome is Outcome.FAILED
    assert result.error_code == "10/2018278"
    assert result.error_message is not None
    assert "MESSAGE_TAG" in result.error_message
    assert "outside of allowed window" in result.error_message


async def test_a_message_tag_reaches_a_user_outside_the_window(
    channel: MessengerChannel, graph: MessengerEmulator
) -> None:
    graph.user_wrote(PSID, at=hours_ago(24 * 30))

    result = await channel.send(text(tag="ACCOUNT_UPDATE"))

    assert result.outcome is Outcome.ACCEPTED
    [received] = graph.messages
    assert (received.messaging_type, received.tag) == ("MESSAGE_TAG", "ACCOUNT_UPDATE")


@pytest.mark.parametrize(("days_silent", "outcome"), [(6, Outcome.ACCEPTED), (8, Outcome.FAILED)])
async def test_the_human_agent_tag_lasts_seven_days(
    channel: MessengerChannel, graph: MessengerEmulator, days_silent: int, outcome: Outcome
) -> None:
    graph.user_wrote(PSID, at=hours_ago(24 * days_silent))

    result = await channel.send(text(tag="HUMAN_AGENT"))

    assert result.outcome is outcome


async def test_an_unknown_tag_is_refused_as_an_invalid_parameter(
    channel: MessengerChannel,
) -> None:
    result = await channel.send(text(tag="PROMOTION"))

    assert (result.outcome, result.error_code) == (Outcome.FAILED, "100")


# --- webhooks (providers.md §5.3) ---------------------------------------------------------------


class WebhookReceiver:
    """Clarion's side of Messenger webhooks: the handshake, and a queue of signed events."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[tuple[bytes, str]] = asyncio.Queue()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/messenger", self._handshake)
        app.router.add_post("/messenger", self._event)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/messenger"

    async def close(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def next(self) -> tuple[bytes, str]:
        return await asyncio.wait_for(self.events.get(), timeout=5)

    async def _handshake(self, request: web.Request) -> web.Response:
        if request.query.get("hub.verify_token") != VERIFY_TOKEN:
            return web.Response(status=403)
        return web.Response(text=request.query["hub.challenge"])

    async def _event(self, request: web.Request) -> web.Response:
        self.events.put_nowait((await request.read(), request.headers["X-Hub-Signature-256"]))
        return web.Response()


@pytest.fixture
async def webhook() -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    await receiver.start()
    yield receiver
    await receiver.close()


@pytest.fixture
async def graph_with_webhook(webhook: WebhookReceiver) -> AsyncIterator[MessengerEmulator]:
    emulator = MessengerEmulator(
        pages={PAGE_ID: PAGE_TOKEN},
        webhook_url=webhook.url,
        app_secret=APP_SECRET,
        webhook_delay=0,
    )
    async with emulator:
        yield emulator


async def test_the_webhook_handshake_echoes_the_challenge(
    graph_with_webhook: MessengerEmulator,
) -> None:
    assert await graph_with_webhook.verify_webhook(verify_token=VERIFY_TOKEN)
    assert not await graph_with_webhook.verify_webhook(verify_token="guess")


async def test_delivery_events_are_signed_with_the_app_secret(
    graph_with_webhook: MessengerEmulator, webhook: WebhookReceiver
) -> None:
    channel = messenger(graph_with_webhook)
    result = await channel.send(text())
    await channel.close()

    body, header = await webhook.next()

    assert verify_webhook_signature(body, header, APP_SECRET)
    [entry] = json.loads(body)["entry"]
    [event] = entry["messaging"]
    assert event["sender"] == {"id": PSID}
    assert event["delivery"]["mids"] == [result.provider_ref]


async def test_a_delivery_event_reads_as_the_message_it_confirms(
    graph_with_webhook: MessengerEmulator, webhook: WebhookReceiver
) -> None:
    channel = messenger(graph_with_webhook)
    before = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    result = await channel.send(text())
    await channel.close()

    body, _header = await webhook.next()

    (event,) = delivery_events(body)
    assert (event.psid, event.mids) == (PSID, (result.provider_ref,))
    assert before <= event.watermark <= datetime.now(UTC).replace(tzinfo=None)


async def test_other_webhook_events_are_no_delivery_events() -> None:
    message = {"sender": {"id": PSID}, "recipient": {"id": PAGE_ID}, "message": {"text": "hi"}}
    page = {"object": "page", "entry": [{"id": PAGE_ID, "messaging": [message]}]}

    assert delivery_events(json.dumps(page).encode()) == []
    assert delivery_events(b'{"object": "instagram", "entry": [{"messaging": [1]}]}') == []


async def test_a_forged_webhook_is_rejected(
    graph_with_webhook: MessengerEmulator, webhook: WebhookReceiver
) -> None:
    channel = messenger(graph_with_webhook)
    await channel.send(text())
    await channel.close()
    body, header = await webhook.next()

    assert not verify_webhook_signature(body.replace(b"delivery", b"deliverx"), header, APP_SECRET)
    assert not verify_webhook_signature(body, header, "another-secret")
    legacy = "sha1=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha1).hexdigest()
    assert not verify_webhook_signature(body, legacy, APP_SECRET)
    assert not verify_webhook_signature(body, "", APP_SECRET)
