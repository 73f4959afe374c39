"""E-mail over SMTP (aiosmtplib): one message per delivery, over a few long-lived connections.

SMTP is sequential on a connection (providers.md §7), so throughput comes from several open
connections, each reused for many messages; a connection is dropped after a fault, after
MAX_MESSAGES_PER_CONNECTION messages (relays cap them) or when it sat idle long enough for the
server to have timed it out.

Replies are classified per recipient (RFC 5321 §4.2, RFC 3463 enhanced status codes): a 4xx
is retried; a 5xx about the recipient's mailbox (5.1.x, 5.2.1, or a bare 550/551/553) retires
the address; other 5xx (policy, content, sender) fail the message; a refused login is the
credential's fault and says so.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import time
from dataclasses import dataclass, field
from email import charset, policy
from email.header import Header
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formatdate
from typing import Final, Literal

import aiosmtplib

from clarion.channels.base import Message, Outcome, Result, refused
from clarion.destinations import PERMISSIVE, DestinationNotAllowedError, DestinationPolicy

Security = Literal["starttls", "tls", "none"]

MAX_MESSAGES_PER_CONNECTION: Final = 100
CLOSING: Final = "421"
AUTH_REQUIRED: Final = 530  # RFC 4954 §6
# Servers may close an idle connection after a while (RFC 5321 §4.5.3.2.7 asks them to wait at
# least 5 minutes; many relays wait less): one idle longer than this is replaced, not reused.
IDLE_LIMIT: Final = 30.0
# RFC 5321 §4.5.3.1.10: a 552 to RCPT means "too many recipients" and is to be treated as 452.
RCPT_TEMPORARY_552: Final = 552
# Without an enhanced code: no such user (550), user not local (551), mailbox name not allowed
# (553).
DEAD_MAILBOX_CODES: Final = frozenset({550, 551, 553})
# RFC 3463 §3.2/§3.3 subjects that say the recipient's mailbox is wrong or gone: every 5.1.x
# addressing status but the sender's own (5.1.7, 5.1.8), and 5.2.1 mailbox disabled.
SENDER_ADDRESS_DETAILS: Final = frozenset({"7", "8"})
DISABLED_MAILBOX: Final = ("2", "1")

# Lines end in CRLF on the wire (RFC 5321 §2.3.8).
_SMTP_COMPAT = policy.compat32.clone(linesep="\r\n")
# UTF-8 bodies as quoted-printable: still readable as source, safe through any 7-bit relay.
_UTF8 = charset.Charset("utf-8")
_UTF8.body_encoding = charset.QP

_ENHANCED = re.compile(r"[245]\.(\d{1,3})\.(\d{1,3})\b")


class MisconfiguredError(Exception):
    """The server cannot do what the smtp credential asks of it; retrying will not help."""


@dataclass
class _Connection:
    smtp: aiosmtplib.SMTP
    sent: int = 0
    last_used: float = field(default_factory=time.monotonic)

    def reusable(self) -> bool:
        return (
            self.smtp.is_connected
            and self.sent < MAX_MESSAGES_PER_CONNECTION
            and time.monotonic() - self.last_used < IDLE_LIMIT
        )


class EmailChannel:
    """Sends e-mails through one SMTP relay with one login (one smtp credential)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        sender: str,
        security: Security = "starttls",
        username: str | None = None,
        password: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        connections: int = 10,
        timeout: float = 30.0,
        local_hostname: str | None = None,
        destinations: DestinationPolicy = PERMISSIVE,
    ) -> None:
        """`sender` is the From address (and the envelope sender). `tls_context` is the trust
        for the server's certificate (a test CA); the system's by default. `destinations` says
        whether `host` may be a private address (clarion.destinations)."""
        self._destinations = destinations
        self._host = host
        self._port = port
        self._sender = sender
        self._domain = sender.rpartition("@")[2]
        self._security = security
        self._username = username
        self._password = password
        self._tls_context = tls_context
        self._timeout = timeout
        self._local_hostname = local_hostname
        self._slots = asyncio.Semaphore(connections)
        self._idle: list[_Connection] = []

    async def send(self, message: Message) -> Result:
        try:
            mail = self._compose(message)
        except ValueError as exc:
            return Result(outcome=Outcome.FAILED, error_message=f"cannot compose the e-mail: {exc}")
        async with self._slots:
            try:
                connection = await self._connection()
            except aiosmtplib.SMTPAuthenticationError as exc:
                return Result(
                    outcome=Outcome.FAILED,
                    error_code=str(exc.code),
                    error_message="the SMTP server refused the smtp credential's Username and "
                    f"Password: {exc.message}",
                )
            except MisconfiguredError as exc:
                return Result(outcome=Outcome.FAILED, error_message=str(exc))
            except DestinationNotAllowedError as exc:
                return refused(exc)
            except (aiosmtplib.SMTPException, OSError) as exc:
                return Result(
                    outcome=Outcome.RETRY, error_message=f"SMTP server unreachable: {exc!r}"
                )
            try:
                result = await self._send(connection, mail, message.address)
            finally:
                await self._release(connection)
        return result

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            await _quit(connection)

    def _compose(self, message: Message) -> tuple[str, bytes]:
        """The Message-ID and bytes of the e-mail of a payload built by clarion.delivery.payloads.

        The Message-ID is the delivery's key, the same on every retry, so a receiving system can
        drop a duplicate. Built with the compat32 email API: the modern EmailMessage parses every
        header it is given and cost five times the CPU per message (≈ 1 ms) in measurement.
        """
        payload = message.payload
        text, html = payload.get("text"), payload.get("html")
        mail: MIMEBase
        if text and html:
            mail = MIMEMultipart("alternative")
            mail.attach(_part(text, "plain"))
            mail.attach(_part(html, "html"))
        else:
            mail = _part(text or html or "", "plain" if text else "html")
        message_id = f"<{message.key}@{self._domain}>"
        headers = {
            "From": self._sender,
            "To": message.address,
            "Subject": payload.get("subject"),
            "Date": formatdate(usegmt=True),
            "Message-ID": message_id,
            "Reply-To": payload.get("reply_to"),
            **(payload.get("headers") or {}),
        }
        for name, value in headers.items():
            if not value:
                continue
            if any(character in value for character in "\r\n\0"):
                # compat32 would write it as it is: a header injection.
                raise ValueError(f"the {name} header must be one line")
            mail[name] = value if value.isascii() else Header(value, "utf-8").encode()
        return message_id, mail.as_bytes(policy=_SMTP_COMPAT)

    async def _send(self, connection: _Connection, mail: tuple[str, bytes], address: str) -> Result:
        message_id, data = mail
        # RFC 6531: a mailbox beyond ASCII needs the server's SMTPUTF8.
        options = [] if address.isascii() and self._sender.isascii() else ["SMTPUTF8"]
        try:
            await connection.smtp.sendmail(self._sender, [address], data, mail_options=options)
        except aiosmtplib.SMTPNotSupported as exc:
            return Result(outcome=Outcome.FAILED, error_message=f"the SMTP server cannot: {exc}")
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients[0]
            result = _recipient_refused(refused.code, refused.message)
        except aiosmtplib.SMTPSenderRefused as exc:
            result = _refused(exc, "the SMTP server refuses the smtp credential's From address")
        except aiosmtplib.SMTPDataError as exc:
            result = _refused(exc, "the SMTP server refused the message")
        except aiosmtplib.SMTPResponseException as exc:
            result = _refused(exc, "the SMTP server refused the transaction")
        except (aiosmtplib.SMTPException, OSError) as exc:
            # Disconnected or timed out mid-transaction.
            connection.smtp.close()
            return Result(outcome=Outcome.RETRY, error_message=f"SMTP connection lost: {exc!r}")
        else:
            connection.sent += 1
            return Result(outcome=Outcome.ACCEPTED, provider_ref=message_id)
        if result.error_code == CLOSING:
            # 421: the server is closing this connection (RFC 5321 §3.8).
            connection.smtp.close()
        return result

    async def _connection(self) -> _Connection:
        """An open connection: the most recently used idle one, or a new one."""
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable():
                return connection
            await _quit(connection)
        # Under a policy refusing private hosts, connect to the checked address ourselves;
        # `hostname` stays the host's name, which TLS verifies the certificate for.
        sock = None if self._destinations.allow_private else await self._checked_socket()
        smtp = aiosmtplib.SMTP(
            hostname=self._host,
            port=self._port if sock is None else None,
            sock=sock,
            use_tls=self._security == "tls",
            start_tls=False,
            tls_context=self._tls_context,
            timeout=self._timeout,
            local_hostname=self._local_hostname,
        )
        try:
            await smtp.connect()
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        try:
            await self._secure_and_log_in(smtp)
        except BaseException:
            smtp.close()
            raise
        return _Connection(smtp)

    async def _checked_socket(self) -> socket.socket:
        """A socket connected to one of the relay's addresses, all checked by the policy."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._timeout):
            addresses = await self._destinations.resolve(self._host, self._port)
            for index, address in enumerate(addresses):
                family = socket.AF_INET6 if ":" in address else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setblocking(False)
                try:
                    await loop.sock_connect(sock, (address, self._port))
                except OSError:
                    sock.close()
                    if index == len(addresses) - 1:
                        raise
                except BaseException:
                    sock.close()
                    raise
                else:
                    return sock
        raise OSError(f"{self._host} has no addresses")

    async def _secure_and_log_in(self, smtp: aiosmtplib.SMTP) -> None:
        """STARTTLS and AUTH step by step, so a server that lacks what the credential asks for
        is told apart from one that is merely down."""
        if self._security == "starttls":
            await smtp.ehlo()
            if not smtp.supports_extension("starttls"):
                raise MisconfiguredError(
                    "the SMTP server does not offer STARTTLS: set the smtp credential's "
                    "Security to tls (port 465) or none"
                )
            await smtp.starttls()
        if self._username is None:
            return
        if smtp.is_ehlo_or_helo_needed:
            await smtp.ehlo()
        if not smtp.supports_extension("auth"):
            raise MisconfiguredError(
                "the SMTP server offers no login on this connection: check the smtp "
                "credential's Security (many servers allow AUTH only over TLS)"
            )
        await smtp.login(self._username, self._password or "")

    async def _release(self, connection: _Connection) -> None:
        if connection.reusable():
            connection.last_used = time.monotonic()
            self._idle.append(connection)
        else:
            await _quit(connection)


async def _quit(connection: _Connection) -> None:
    """Say goodbye if the server is still there; a connection being dropped owes it nothing."""
    if connection.smtp.is_connected:
        try:
            await connection.smtp.quit(timeout=5.0)
        except (aiosmtplib.SMTPException, OSError):
            connection.smtp.close()


def _recipient_refused(code: int, text: str) -> Result:
    """RCPT TO refused: a mailbox that does not exist retires the address (module docstring)."""
    if 400 <= code < 500 or code == RCPT_TEMPORARY_552:
        outcome = Outcome.RETRY
    elif enhanced := _ENHANCED.match(text):
        subject, detail = enhanced.groups()
        dead = (subject == "1" and detail not in SENDER_ADDRESS_DETAILS) or (
            subject,
            detail,
        ) == DISABLED_MAILBOX
        outcome = Outcome.DEAD_ADDRESS if dead else Outcome.FAILED
    else:
        outcome = Outcome.DEAD_ADDRESS if code in DEAD_MAILBOX_CODES else Outcome.FAILED
    return Result(outcome=outcome, error_code=str(code), error_message=text)


def _refused(exc: aiosmtplib.SMTPResponseException, meaning: str) -> Result:
    """Any other refusal: 4xx (421 closing, 451 local error, 452 storage) is worth a retry."""
    if exc.code == AUTH_REQUIRED:
        meaning = "the SMTP server requires a login: give the smtp credential Username and Password"
    outcome = Outcome.RETRY if 400 <= exc.code < 500 else Outcome.FAILED
    return Result(
        outcome=outcome, error_code=str(exc.code), error_message=f"{meaning}: {exc.message}"
    )


def _part(content: str, subtype: str) -> MIMEText:
    """A text part: us-ascii when it is, else UTF-8 quoted-printable."""
    if content.isascii():
        return MIMEText(content, subtype, "us-ascii")
    part = MIMEText("", subtype, "us-ascii")
    part.set_payload(content, _UTF8)
    return part
