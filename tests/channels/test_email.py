"""E-mail: the SMTP channel against the aiosmtpd emulator, over real sockets.

What arrives is parsed back from the bytes the server received; each reply class of RFC 5321 /
RFC 3463 (providers.md §7) maps to one outcome; connections are reused, rotated and replaced
as a relay expects.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from clarion.channels import email as email_channel
from clarion.channels.base import Message, Outcome
from clarion.channels.email import EmailChannel, Security
from clarion.emulators.smtp import SmtpEmulator
from support import closed_port

SENDER = "notifications@example.com"
KEY = "0123abcd-ef01-2345-6789-abcdef012345"
USERS = {"clarion": "s3cret"}


@pytest.fixture
async def relay() -> AsyncIterator[SmtpEmulator]:
    async with SmtpEmulator() as emulator:
        yield emulator


def smtp(relay: SmtpEmulator, **options: Any) -> EmailChannel:
    settings: dict[str, Any] = {
        "host": relay.host,
        "port": relay.port,
        "sender": SENDER,
        "security": relay.security,
        "tls_context": relay.client_ssl_context(),
        "local_hostname": "clarion.test",
        **options,
    }
    return EmailChannel(**settings)


@pytest.fixture
async def channel(relay: SmtpEmulator) -> AsyncIterator[EmailChannel]:
    channel = smtp(relay)
    yield channel
    await channel.close()


def mail(to: str = "ada@example.com", **payload: Any) -> Message:
    return Message(
        key=KEY,
        address=to,
        payload=payload or {"subject": "Your order shipped", "text": "It's on its way."},
    )


# --- what is sent -----------------------------------------------------------------------------


async def test_a_plain_text_email_is_accepted_under_its_message_id(
    channel: EmailChannel, relay: SmtpEmulator
) -> None:
    result = await channel.send(mail())

    assert result.outcome is Outcome.ACCEPTED
    assert result.provider_ref == f"<{KEY}@example.com>"
    [received] = relay.messages
    assert (received.sender, received.recipients) == (SENDER, ["ada@example.com"])
    message = received.message
    assert message["From"] == SENDER
    assert message["To"] == "ada@example.com"
    assert message["Subject"] == "Your order shipped"
    assert message["Message-ID"] == result.provider_ref
    assert message["Date"]
    assert message.get_content_type() == "text/plain"
    assert message.get_content().strip() == "It's on its way."


async def test_html_goes_as_an_alternative_to_the_text(
    channel: EmailChannel, relay: SmtpEmulator
) -> None:
    await channel.send(mail(subject="Hi", text="Plain", html="<p>Rich</p>"))

    message = relay.messages[0].message
    assert message.get_content_type() == "multipart/alternative"
    plain = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert plain is not None
    assert html is not None
    assert plain.get_content().strip() == "Plain"
    assert html.get_content().strip() == "<p>Rich</p>"


async def test_html_alone_is_the_only_part(channel: EmailChannel, relay: SmtpEmulator) -> None:
    await channel.send(mail(subject="Hi", text=None, html="<p>Rich</p>"))

    message = relay.messages[0].message
    assert message.get_content_type() == "text/html"


async def test_reply_to_and_extra_headers_are_set(
    channel: EmailChannel, relay: SmtpEmulator
) -> None:
    headers = {"List-Unsubscribe": "<https://example.com/u/1>", "X-Campaign": "spring"}

    await channel.send(mail(text="Hi", reply_to="support@example.com", headers=headers))

    message = relay.messages[0].message
    assert message["Reply-To"] == "support@example.com"
    assert message["List-Unsubscribe"] == "<https://example.com/u/1>"
    assert message["X-Campaign"] == "spring"
    assert message["Subject"] is None  # no Title, no subject


async def test_non_ascii_text_survives_the_trip(channel: EmailChannel, relay: SmtpEmulator) -> None:
    await channel.send(mail(subject="Grüße ✓", text="Ünïcödé — 日本語"))

    message = relay.messages[0].message
    assert message["Subject"] == "Grüße ✓"
    assert message.get_content().strip() == "Ünïcödé — 日本語"


async def test_an_address_beyond_ascii_goes_with_smtputf8(
    channel: EmailChannel, relay: SmtpEmulator
) -> None:
    result = await channel.send(mail(to="jürgen@müller.example"))

    assert result.outcome is Outcome.ACCEPTED
    assert relay.messages[0].recipients == ["jürgen@müller.example"]


async def test_a_retry_carries_the_same_message_id(
    channel: EmailChannel, relay: SmtpEmulator
) -> None:
    await channel.send(mail())
    await channel.send(mail())

    first, second = (received.message["Message-ID"] for received in relay.messages)
    assert first == second


async def test_a_header_that_would_break_the_message_fails_it(channel: EmailChannel) -> None:
    result = await channel.send(mail(text="Hi", headers={"X-Evil": "a\r\nBcc: victim@example.com"}))

    assert result.outcome is Outcome.FAILED
    assert result.error_message is not None
    assert "cannot compose" in result.error_message


# --- security and login -----------------------------------------------------------------------


@pytest.mark.parametrize("security", ["starttls", "tls", "none"])
async def test_each_security_mode_logs_in_and_delivers(security: Security) -> None:
    async with SmtpEmulator(security=security, users=USERS) as relay:
        channel = smtp(relay, username="clarion", password="s3cret")
        try:
            result = await channel.send(mail())
        finally:
            await channel.close()

    assert result.outcome is Outcome.ACCEPTED
    [received] = relay.messages
    assert received.user == "clarion"
    assert received.tls is (security != "none")


async def test_a_refused_login_is_a_configuration_error() -> None:
    async with SmtpEmulator(security="starttls", users=USERS) as relay:
        channel = smtp(relay, username="clarion", password="wrong")
        try:
            result = await channel.send(mail())
        finally:
            await channel.close()

    assert (result.outcome, result.error_code) == (Outcome.FAILED, "535")
    assert result.error_message is not None
    assert "Username and Password" in result.error_message
    assert relay.messages == []


async def test_a_relay_that_needs_a_login_says_so() -> None:
    async with SmtpEmulator(security="starttls", users=USERS) as relay:
        channel = smtp(relay)
        try:
            result = await channel.send(mail())
        finally:
            await channel.close()

    assert (result.outcome, result.error_code) == (Outcome.FAILED, "530")
    assert result.error_message is not None
    assert "requires a login" in result.error_message


async def test_starttls_asked_of_a_server_without_it_fails(relay: SmtpEmulator) -> None:
    channel = smtp(relay, security="starttls")
    try:
        result = await channel.send(mail())
    finally:
        await channel.close()

    assert result.outcome is Outcome.FAILED
    assert result.error_message is not None
    assert "does not offer STARTTLS" in result.error_message
    assert relay.messages == []


async def test_a_login_the_server_offers_only_over_tls_fails_without_it() -> None:
    async with SmtpEmulator(security="starttls", users=USERS) as relay:
        channel = smtp(relay, security="none", username="clarion", password="s3cret")
        try:
            result = await channel.send(mail())
        finally:
            await channel.close()

    assert result.outcome is Outcome.FAILED
    assert result.error_message is not None
    assert "offers no login" in result.error_message


async def test_a_certificate_the_channel_does_not_trust_is_not_sent_to() -> None:
    async with SmtpEmulator(security="starttls") as relay:
        channel = smtp(relay, tls_context=None)  # the system's trust: not the test CA
        try:
            result = await channel.send(mail())
        finally:
            await channel.close()

    assert result.outcome is Outcome.RETRY
    assert relay.messages == []


# --- replies per recipient (RFC 5321 §4.2, RFC 3463) ------------------------------------------


@pytest.mark.parametrize(
    ("address", "outcome", "code"),
    [
        ("dead-1@example.com", Outcome.DEAD_ADDRESS, "550"),
        ("bad-1@example.com", Outcome.DEAD_ADDRESS, "553"),
        ("busy-1@example.com", Outcome.RETRY, "451"),
    ],
)
async def test_the_sandbox_addresses_script_the_reply(
    channel: EmailChannel, relay: SmtpEmulator, address: str, outcome: Outcome, code: str
) -> None:
    result = await channel.send(mail(to=address))

    assert (result.outcome, result.error_code) == (outcome, code)
    assert relay.messages == []


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        ("450 4.2.1 Mailbox busy", Outcome.RETRY),
        ("452 4.2.2 Mailbox full", Outcome.RETRY),
        # "Too many recipients", to be treated as 452 (RFC 5321 §4.5.3.1.10).
        ("552 5.5.3 Too many recipients", Outcome.RETRY),
        ("550 5.1.1 No such user", Outcome.DEAD_ADDRESS),
        ("551 5.1.6 User has moved", Outcome.DEAD_ADDRESS),
        ("550 5.2.1 Mailbox disabled", Outcome.DEAD_ADDRESS),
        ("550 Requested action not taken: mailbox unavailable", Outcome.DEAD_ADDRESS),
        # Policy, not the mailbox: retiring every address for it would be a disaster.
        ("554 5.7.1 Relay access denied", Outcome.FAILED),
        ("550 5.7.1 Message rejected as spam", Outcome.FAILED),
        ("553 5.1.8 Sender domain does not exist", Outcome.FAILED),
    ],
)
async def test_a_recipient_reply_is_classified_by_its_codes(
    channel: EmailChannel, relay: SmtpEmulator, reply: str, outcome: Outcome
) -> None:
    relay.script("grace@example.com", reply)

    result = await channel.send(mail(to="grace@example.com"))

    assert (result.outcome, result.error_code) == (outcome, reply[:3])
    assert result.error_message == reply[4:]


async def test_the_connection_stays_usable_after_a_refused_recipient(
    channel: EmailChannel, relay: SmtpEmulator
) -> None:
    await channel.send(mail(to="dead@example.com"))
    result = await channel.send(mail())

    assert result.outcome is Outcome.ACCEPTED
    assert relay.connections == 1


async def test_a_421_is_retried_on_a_new_connection(
    channel: EmailChannel, relay: SmtpEmulator
) -> None:
    relay.script("grace@example.com", "421 4.3.2 Service shutting down")

    closing = await channel.send(mail(to="grace@example.com"))
    after = await channel.send(mail())

    assert (closing.outcome, closing.error_code) == (Outcome.RETRY, "421")
    assert after.outcome is Outcome.ACCEPTED
    assert relay.connections == 2


async def test_a_message_over_the_size_limit_fails() -> None:
    async with SmtpEmulator(data_size_limit=1000) as relay:
        channel = smtp(relay)
        try:
            result = await channel.send(mail(text="x" * 2000))
        finally:
            await channel.close()

    assert (result.outcome, result.error_code) == (Outcome.FAILED, "552")


async def test_an_unreachable_relay_is_retried() -> None:
    channel = EmailChannel(host="127.0.0.1", port=closed_port(), sender=SENDER, security="none")
    try:
        result = await channel.send(mail())
    finally:
        await channel.close()

    assert result.outcome is Outcome.RETRY
    assert result.error_message is not None
    assert "unreachable" in result.error_message


async def test_a_relay_that_stops_answering_is_retried() -> None:
    async with SmtpEmulator(slow_delay=30) as relay:
        channel = smtp(relay, timeout=0.2)
        try:
            result = await channel.send(mail(to="slow@example.com"))
        finally:
            await channel.close()

    assert result.outcome is Outcome.RETRY
    assert result.error_message is not None
    assert "connection lost" in result.error_message


# --- connections ------------------------------------------------------------------------------


async def test_concurrent_sends_share_a_bounded_set_of_connections(relay: SmtpEmulator) -> None:
    channel = smtp(relay, connections=3)
    try:
        results = await asyncio.gather(
            *(channel.send(mail(to=f"user{n}@example.com")) for n in range(30))
        )
    finally:
        await channel.close()

    assert {result.outcome for result in results} == {Outcome.ACCEPTED}
    assert len(relay.messages) == 30
    assert relay.connections == 3


async def test_a_connection_is_replaced_after_its_message_allowance(
    channel: EmailChannel, relay: SmtpEmulator
) -> None:
    for _ in range(email_channel.MAX_MESSAGES_PER_CONNECTION + 1):
        await channel.send(mail())

    assert relay.connections == 2
