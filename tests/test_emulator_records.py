"""Every emulator keeps only the latest `keep` records of each kind, and still behaves.

`clarion serve --sandbox` runs the emulators for as long as the server runs; unbounded records
grew it by ~170 MB per 100,000 deliveries. Each test sends more than `keep` messages through
one emulator family over its real protocol (Clarion's channels, or the protocol's own client),
then checks that only the latest `keep` are recorded and that what depends on remembered state
(duplicate apns-ids, access tokens, status callbacks, webhooks, delivery receipts) still works.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import uuid
from collections.abc import Awaitable
from typing import Any, TypeVar

import aiohttp
import pytest
import smpp34
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clarion import addresses
from clarion.channels.apns import ApnsChannel
from clarion.channels.base import Message, Outcome, Result
from clarion.channels.email import EmailChannel
from clarion.channels.fcm import FcmChannel
from clarion.channels.google_oauth import ServiceAccountTokens
from clarion.channels.messenger import MessengerChannel
from clarion.channels.twilio_sms import TwilioSmsChannel
from clarion.channels.webpush import WebPushChannel
from clarion.emulators.apns import ApnsEmulator
from clarion.emulators.fcm import FcmEmulator
from clarion.emulators.messenger import MessengerEmulator
from clarion.emulators.records import Records
from clarion.emulators.smsc import SmscEmulator
from clarion.emulators.smtp import SmtpEmulator
from clarion.emulators.twilio import TwilioEmulator
from clarion.emulators.webpush import WebPushEmulator

KEEP = 5
SENT = 8  # more than KEEP
T = TypeVar("T")


async def bounded(awaitable: Awaitable[T]) -> T:
    """The bound only turns a hang into a failure; nothing is timed."""
    async with asyncio.timeout(15):
        return await awaitable


async def until(condition: Any) -> None:
    async with asyncio.timeout(15):
        while not condition():  # noqa: ASYNC110 - the emulators report on their own time
            await asyncio.sleep(0.01)


class Receiver:
    """An application endpoint that takes every POST: Twilio's status callbacks, Messenger's
    webhooks."""

    def __init__(self) -> None:
        self.posts: list[bytes] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _receive(self, request: web.Request) -> web.Response:
        self.posts.append(await request.read())
        return web.Response(status=200)


def test_records_forget_the_oldest_and_read_like_a_list() -> None:
    records: Records[int] = Records(maxlen=KEEP)
    for number in range(SENT):
        records.append(number)

    assert records == [3, 4, 5, 6, 7]
    assert records != [0, 1, 2, 3, 4]
    assert (records[0], records[-1], records[-2:], len(records)) == (3, 7, [6, 7], KEEP)
    assert [n for n in records if n % 2] == [3, 5, 7]
    assert Records() == []


async def test_apns_keeps_the_latest_and_still_flags_duplicate_ids() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    emulator = ApnsEmulator(keep=KEEP)
    emulator.register_key(
        key_id="ABC123DEFG",
        team_id="DEF123GHIJ",
        public_key_pem=key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    await emulator.start()
    channel = ApnsChannel(
        key_id="ABC123DEFG",
        team_id="DEF123GHIJ",
        bundle_id="com.example.clarion",
        private_key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        base_url=emulator.url,
        ssl_context=emulator.client_ssl_context(),
    )

    def notification(number: int, apns_id: str) -> Message:
        return Message(
            key=apns_id, address=f"{number:02x}" * 32, payload={"aps": {"alert": str(number)}}
        )

    try:
        ids = [str(uuid.uuid4()) for _ in range(SENT)]
        for number, apns_id in enumerate(ids):
            result = await bounded(channel.send(notification(number, apns_id)))
            assert result.outcome is Outcome.ACCEPTED

        assert [n.json()["aps"]["alert"] for n in emulator.accepted] == ["3", "4", "5", "6", "7"]
        assert emulator.requests == SENT
        assert emulator.duplicate_ids == []

        # Sent again: the latest id is still remembered, the first one no longer is.
        await bounded(channel.send(notification(7, ids[-1])))
        await bounded(channel.send(notification(0, ids[0])))

        assert emulator.duplicate_ids == [ids[-1]]
        assert [n.json()["aps"]["alert"] for n in emulator.accepted[-2:]] == ["7", "0"]
        assert len(emulator.accepted) == KEEP
    finally:
        await channel.close()
        await emulator.close()


async def test_fcm_keeps_the_latest_messages_and_grants() -> None:
    async with FcmEmulator(keep=KEEP) as emulator:
        account = emulator.new_service_account("clarion-test")
        channel = FcmChannel(service_account=account, base_url=emulator.url)
        try:
            for number in range(SENT):
                message = Message(
                    key=f"delivery-{number}",
                    address=f"device-{number}",
                    payload={"notification": {"title": "Hello", "body": "World"}},
                )
                result = await bounded(channel.send(message))
                assert result.outcome is Outcome.ACCEPTED
        finally:
            await channel.close()
        assert [m.message["token"] for m in emulator.received] == [
            f"device-{n}" for n in range(3, SENT)
        ]

        # More grants than `keep`: the latest are honoured, the oldest revoked.
        async with aiohttp.ClientSession() as session:
            tokens = [
                await bounded(ServiceAccountTokens(account).access_token(session))
                for _ in range(SENT)
            ]

            async def send_with(token: str) -> int:
                async with session.post(
                    f"{emulator.url}/v1/projects/clarion-test/messages:send",
                    json={"message": {"token": "device-x"}},
                    headers={"Authorization": f"Bearer {token}"},
                ) as response:
                    return response.status

            assert await bounded(send_with(tokens[-1])) == 200
            assert await bounded(send_with(tokens[0])) == 401
        assert len(emulator.grants) == KEEP
        assert set(emulator.grants) == {account["client_email"]}
        assert emulator.received[-1].message == {"token": "device-x"}


async def test_twilio_keeps_the_latest_and_still_reports_every_message() -> None:
    account_sid, auth_token = "AC" + secrets.token_hex(16), secrets.token_hex(16)
    async with (
        Receiver() as receiver,
        TwilioEmulator(accounts={account_sid: auth_token}, callback_delay=0, keep=KEEP) as twilio,
    ):
        channel = TwilioSmsChannel(
            account_sid=account_sid,
            auth_token=auth_token,
            from_="+15005550006",
            base_url=twilio.url,
            status_callback=receiver.url,
        )
        try:
            results: list[Result] = []
            for number in range(SENT):
                message = Message(
                    key=f"k{number}", address=f"+1415555010{number}", payload={"body": "hi"}
                )
                results.append(await bounded(channel.send(message)))
        finally:
            await channel.close()
        sids = [result.provider_ref for result in results]

        # Each message is walked to `delivered` (sent, delivered), kept or not.
        await until(lambda: len(receiver.posts) == 2 * SENT)
        delivered = [post for post in receiver.posts if b"MessageStatus=delivered" in post]
        assert len(delivered) == SENT
        assert [m.sid for m in twilio.messages] == sids[-KEEP:]
        assert len(twilio.callbacks) == KEEP
        assert {c.params["MessageSid"] for c in twilio.callbacks} <= set(sids)

        # A kept message can be fetched; one forgotten is gone, as after Twilio's retention.
        credentials = base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        async with aiohttp.ClientSession(
            headers={"Authorization": f"Basic {credentials}"}
        ) as session:
            base = f"{twilio.url}/2010-04-01/Accounts/{account_sid}/Messages"
            async with session.get(f"{base}/{sids[-1]}.json") as response:
                assert (response.status, (await response.json())["status"]) == (200, "delivered")
            async with session.get(f"{base}/{sids[0]}.json") as response:
                assert response.status == 404


async def test_messenger_keeps_the_latest_and_still_posts_every_webhook() -> None:
    async with (
        Receiver() as receiver,
        MessengerEmulator(
            pages={"1000": "page-token"},
            webhook_url=receiver.url,
            app_secret="app-secret",
            webhook_delay=0,
            keep=KEEP,
        ) as graph,
    ):
        channel = MessengerChannel(
            page_id="1000", page_access_token="page-token", base_url=graph.url
        )
        try:
            for number in range(SENT):
                message = Message(
                    key=f"k{number}", address=f"psid-{number}", payload={"text": "hi"}
                )
                result = await bounded(channel.send(message))
                assert result.outcome is Outcome.ACCEPTED
        finally:
            await channel.close()
        await until(lambda: len(receiver.posts) == SENT)
        await until(lambda: len(graph.webhook_posts) == KEEP)

        assert [m.recipient["id"] for m in graph.messages] == [f"psid-{n}" for n in range(3, SENT)]
        assert {post.body for post in graph.webhook_posts} <= set(receiver.posts)


async def test_webpush_keeps_the_latest_pushes() -> None:
    scalar = ec.generate_private_key(ec.SECP256R1()).private_numbers().private_value
    vapid_key = base64.urlsafe_b64encode(scalar.to_bytes(32, "big")).rstrip(b"=").decode()
    async with WebPushEmulator(keep=KEEP) as service:
        channel = WebPushChannel(
            vapid_private_key=vapid_key,
            subject="mailto:ops@example.com",
            ssl_context=service.client_ssl_context(),
        )
        browser = service.subscribe(application_server_key=channel.vapid_public_key)
        try:
            for number in range(SENT):
                message = Message(
                    key=f"k{number}",
                    address=addresses.normalize("webpush", browser.address()),
                    payload={"title": "hi", "body": str(number)},
                )
                result = await bounded(channel.send(message))
                assert result.outcome is Outcome.ACCEPTED
        finally:
            await channel.close()

        assert [push.json()["body"] for push in service.received] == ["3", "4", "5", "6", "7"]
        assert service.pending(browser.endpoint) == service.received


async def test_smtp_keeps_the_latest_mail() -> None:
    async with SmtpEmulator(keep=KEEP) as relay:
        channel = EmailChannel(
            host=relay.host,
            port=relay.port,
            sender="clarion@example.com",
            security=relay.security,
            tls_context=relay.client_ssl_context(),
            local_hostname="clarion.test",
        )
        try:
            for number in range(SENT):
                message = Message(
                    key=f"k{number}",
                    address=f"user{number}@example.com",
                    payload={"subject": f"mail {number}", "text": "hi"},
                )
                result = await bounded(channel.send(message))
                assert result.outcome is Outcome.ACCEPTED
        finally:
            await channel.close()

        assert [mail.recipients for mail in relay.messages] == [
            [f"user{n}@example.com"] for n in range(3, SENT)
        ]
        assert relay.messages[-1].message["Subject"] == "mail 7"


async def _bind(smsc: SmscEmulator, bind_type: str) -> tuple[smpp34.Client, smpp34.Smsc]:
    client = smpp34.Client(smsc.host, smsc.port, "clarion", "sandbox", bind_type=bind_type)
    return client, await bounded(client.connect())


async def _receipted_id(session: smpp34.Smsc) -> str:
    event = await bounded(session.next())
    assert isinstance(event, smpp34.DeliverSmEvent)
    text = event.short_message.decode("latin-1")
    return text.removeprefix("id:").partition(" ")[0]


async def test_smsc_keeps_the_latest_and_bounds_the_receipts_it_holds() -> None:
    # Receipts for a system_id with no receiving bind are held until one binds: the latest
    # `keep` of them, the others given up and no longer counted against `queue_limit`.
    keep = 2
    smsc = SmscEmulator(accounts={"clarion": "sandbox"}, keep=keep, queue_limit=3)
    await smsc.start()
    try:
        transmitter, sending = await _bind(smsc, "TX")
        try:
            message_ids = []
            for number in range(4):  # the 4th fits only if a held receipt was given up
                response = await bounded(
                    sending.submit_sm(
                        f"1415555010{number}", f"sms {number}".encode(), registered_delivery=1
                    )
                )
                assert response.is_success, hex(response.command_status)
                message_ids.append(response.message_id)

            receiver, receiving = await _bind(smsc, "TRX")
            try:
                held = {await _receipted_id(receiving) for _ in range(keep)}
                assert held == set(message_ids[-keep:])

                # Sent after the held ones: any older receipt still held would precede it.
                response = await bounded(
                    sending.submit_sm("14155550199", b"sms 4", registered_delivery=1)
                )
                assert response.is_success
                assert await _receipted_id(receiving) == response.message_id
                await smsc.wait_for(lambda: (response.message_id, "DELIVRD") in smsc.receipts)
            finally:
                await receiver.stop()
        finally:
            await transmitter.stop()
    finally:
        await smsc.close()

    assert [m.text for m in smsc.messages] == ["sms 3", "sms 4"]
    assert [s.message_id for s in smsc.submits] == [message_ids[-1], response.message_id]
    assert len(smsc.receipts) == keep
    assert smsc.receipts[0][0] in message_ids[-keep:]
    assert smsc.binds == [("clarion", 0), ("clarion", 0)]


def test_a_negative_keep_is_refused() -> None:
    with pytest.raises(ValueError, match="maxlen"):
        ApnsEmulator(keep=-1)
