"""Every channel applies the destination policy where it connects, after DNS: a credential or
web-push endpoint aimed at a private address fails the delivery (DestinationNotAllowed) and
nothing reaches the server; allowed, the same channel delivers. Real emulators, real sockets.

`LOOPBACK_ALLOWED` refuses private addresses but allows 127.0.0.0/8 (as an operator allows an
internal relay): it runs the checked connect path of each transport — connect to the checked
address, TLS still verified for the host name — all the way to a delivered message.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clarion.channels.apns import ApnsChannel
from clarion.channels.base import Message, Outcome, Result
from clarion.channels.email import EmailChannel
from clarion.channels.smpp import SmppChannel
from clarion.channels.webpush import WebPushChannel
from clarion.destinations import ERROR_CODE, PERMISSIVE, DestinationPolicy
from clarion.emulators.apns import ApnsEmulator
from clarion.emulators.smsc import SmscEmulator
from clarion.emulators.smtp import SmtpEmulator
from clarion.emulators.webpush import WebPushEmulator

DENY = DestinationPolicy()
LOOPBACK_ALLOWED = DestinationPolicy(
    allowed_networks=(ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
)
KEY_ID = "ABC123DEFG"
TEAM_ID = "DEF123GHIJ"
BUNDLE_ID = "com.example.clarion"
TOKEN = "ab" * 32


def assert_refused(result: Result, host: str) -> None:
    assert result.outcome is Outcome.FAILED
    assert result.error_code == ERROR_CODE
    message = result.error_message or ""
    assert host in message
    assert "127.0.0.1" in message  # the address it resolved to
    assert "CLARION_ALLOW_PRIVATE_DESTINATIONS=true" in message


# --- APNs (HTTP/2) ---------------------------------------------------------------------------


@dataclass
class Apns:
    emulator: ApnsEmulator
    private_pem: bytes
    channels: list[ApnsChannel]

    def channel(self, base_url: str, destinations: DestinationPolicy) -> ApnsChannel:
        channel = ApnsChannel(
            key_id=KEY_ID,
            team_id=TEAM_ID,
            bundle_id=BUNDLE_ID,
            private_key=self.private_pem,
            base_url=base_url,
            ssl_context=self.emulator.client_ssl_context(),
            destinations=destinations,
        )
        self.channels.append(channel)
        return channel


@pytest.fixture
async def apns() -> AsyncIterator[Apns]:
    key = ec.generate_private_key(ec.SECP256R1())
    emulator = ApnsEmulator()
    emulator.register_key(
        key_id=KEY_ID,
        team_id=TEAM_ID,
        public_key_pem=key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    await emulator.start()
    found = Apns(
        emulator,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        [],
    )
    yield found
    for channel in found.channels:
        await channel.close()
    await emulator.close()


def alert() -> Message:
    return Message(key="k1", address=TOKEN, payload={"aps": {"alert": "hi"}})


async def test_apns_to_a_private_provider_url_fails_and_sends_nothing(apns: Apns) -> None:
    url = f"https://127.0.0.1:{apns.emulator.port}"
    result = await apns.channel(url, DENY).send(alert())
    assert_refused(result, "127.0.0.1")
    assert apns.emulator.requests == 0
    assert apns.emulator.accepted == []


async def test_apns_to_a_private_provider_url_is_delivered_when_allowed(apns: Apns) -> None:
    url = f"https://127.0.0.1:{apns.emulator.port}"
    result = await apns.channel(url, PERMISSIVE).send(alert())
    assert result.outcome is Outcome.ACCEPTED
    assert len(apns.emulator.accepted) == 1


async def test_apns_to_a_name_that_resolves_to_loopback_is_refused_after_dns(apns: Apns) -> None:
    result = await apns.channel(f"https://localhost:{apns.emulator.port}", DENY).send(alert())
    assert_refused(result, "localhost (resolved to 127.0.0.1)")
    assert apns.emulator.requests == 0


async def test_apns_connects_to_the_checked_address_and_verifies_tls_for_the_name(
    apns: Apns,
) -> None:
    """The certificate names `localhost` and 127.0.0.1: the checked path connects to the
    address, and TLS accepts it for the host name it was asked for."""
    channel = apns.channel(f"https://localhost:{apns.emulator.port}", LOOPBACK_ALLOWED)
    assert (await channel.send(alert())).outcome is Outcome.ACCEPTED
    assert (await channel.send(alert())).outcome is Outcome.ACCEPTED
    assert len(apns.emulator.accepted) == 2


async def test_apns_on_the_checked_path_still_refuses_a_certificate_for_another_name(
    apns: Apns,
) -> None:
    """Connecting to the checked IP must not weaken TLS: the emulator's certificate is for
    127.0.0.1 and `localhost`, so the same server reached as ::ffff:127.0.0.1 fails its TLS
    handshake (and is retried later, as any TLS failure)."""
    channel = apns.channel(f"https://[::ffff:127.0.0.1]:{apns.emulator.port}", LOOPBACK_ALLOWED)
    result = await channel.send(alert())
    assert result.outcome is Outcome.RETRY
    assert "certificate" in (result.error_message or "").lower(), result
    assert apns.emulator.requests == 0


# --- web push (aiohttp) ----------------------------------------------------------------------

VAPID_KEY = ec.generate_private_key(ec.SECP256R1())
VAPID_PRIVATE = (
    base64.urlsafe_b64encode(VAPID_KEY.private_numbers().private_value.to_bytes(32, "big"))
    .rstrip(b"=")
    .decode()
)


@pytest.fixture
async def push_service() -> AsyncIterator[WebPushEmulator]:
    async with WebPushEmulator(accept_unknown=True) as emulator:
        yield emulator


async def push_to(
    service: WebPushEmulator, destinations: DestinationPolicy, *, host: str = "127.0.0.1"
) -> Result:
    channel = WebPushChannel(
        vapid_private_key=VAPID_PRIVATE,
        subject="mailto:ops@example.com",
        ssl_context=service.client_ssl_context(),
        destinations=destinations,
    )
    subscription = service.subscribe()
    address = subscription.address().replace("127.0.0.1", host)
    try:
        return await channel.send(Message(key="k1", address=address, payload={"title": "hi"}))
    finally:
        await channel.close()


async def test_web_push_to_a_private_endpoint_fails_and_sends_nothing(
    push_service: WebPushEmulator,
) -> None:
    assert_refused(await push_to(push_service, DENY), "127.0.0.1")
    assert_refused(await push_to(push_service, DENY, host="localhost"), "localhost")
    assert push_service.received == []


async def test_web_push_to_a_private_endpoint_is_delivered_when_allowed(
    push_service: WebPushEmulator,
) -> None:
    assert (await push_to(push_service, PERMISSIVE)).outcome is Outcome.ACCEPTED
    # (The emulator checks the VAPID audience against its own 127.0.0.1 origin.)
    result = await push_to(push_service, LOOPBACK_ALLOWED)
    assert result.outcome is Outcome.ACCEPTED
    assert len(push_service.received) == 2


# --- SMTP ------------------------------------------------------------------------------------


async def mail_through(
    relay: SmtpEmulator, destinations: DestinationPolicy, *, host: str = "127.0.0.1"
) -> Result:
    channel = EmailChannel(
        host=host,
        port=relay.port,
        sender="news@example.com",
        security=relay.security,
        tls_context=relay.client_ssl_context(),
        destinations=destinations,
    )
    try:
        return await channel.send(
            Message(key="k1", address="ada@example.com", payload={"subject": "s", "text": "t"})
        )
    finally:
        await channel.close()


@pytest.mark.parametrize("security", ["none", "starttls", "tls"])
async def test_smtp_to_a_private_host_fails_and_connects_to_nothing(security: Any) -> None:
    async with SmtpEmulator(security=security) as relay:
        assert_refused(await mail_through(relay, DENY), "127.0.0.1")
        assert_refused(await mail_through(relay, DENY, host="localhost"), "localhost")
        assert relay.connections == 0
        assert relay.messages == []


@pytest.mark.parametrize("security", ["none", "starttls", "tls"])
async def test_smtp_to_a_private_host_is_delivered_when_allowed(security: Any) -> None:
    """Also through the checked socket, TLS verified for the host name (`localhost`)."""
    async with SmtpEmulator(security=security) as relay:
        assert (await mail_through(relay, PERMISSIVE)).outcome is Outcome.ACCEPTED
        checked = await mail_through(relay, LOOPBACK_ALLOWED, host="localhost")
        assert checked.outcome is Outcome.ACCEPTED, checked
        assert len(relay.messages) == 2


# --- SMPP ------------------------------------------------------------------------------------


async def sms_through(
    smsc: SmscEmulator, destinations: DestinationPolicy, *, host: str = "127.0.0.1"
) -> Result:
    channel = SmppChannel(
        host=host,
        port=smsc.port,
        system_id="clarion",
        password="sandbox",
        source_addr="Clarion",
        connect_timeout=2.0,
        destinations=destinations,
    )
    try:
        return await channel.send(Message(key="k1", address="+14155550100", payload={"body": "hi"}))
    finally:
        await channel.close()


async def test_smpp_to_a_private_host_fails_and_binds_nothing() -> None:
    smsc = SmscEmulator(accounts={"clarion": "sandbox"})
    await smsc.start()
    try:
        assert_refused(await sms_through(smsc, DENY), "127.0.0.1")
        assert_refused(await sms_through(smsc, DENY, host="localhost"), "localhost")
        assert smsc.messages == []
        assert (await sms_through(smsc, PERMISSIVE)).outcome is Outcome.ACCEPTED
        checked = await sms_through(smsc, LOOPBACK_ALLOWED, host="localhost")
        assert checked.outcome is Outcome.ACCEPTED, checked
        assert len(smsc.messages) == 2
    finally:
        await smsc.close()
