"""A local SMTP relay (aiosmtpd) with scripted replies per recipient, for tests, benchmarks and
`--sandbox`.

It speaks what a submission server speaks (providers.md §7, §10.7): STARTTLS (required when
`security="starttls"`) or implicit TLS with a throwaway CA, AUTH PLAIN/LOGIN for the `users`
it is given (then required before MAIL), SMTPUTF8, a message size limit. The recipient's local
part scripts the answer to RCPT: `dead…` has no mailbox (550 5.1.1), `bad…` is a mailbox name
the server refuses (553 5.1.3), `busy…` is a temporary failure (451 4.3.0), `slow…` is accepted
late; `script()` sets any reply for one address, and a 421 also closes the connection.
Accepted messages are recorded in `messages`.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import hmac
import logging
import secrets
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Literal, Self

import trustme
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from clarion.emulators.records import Records

Security = Literal["starttls", "tls", "none"]

DATA_SIZE_LIMIT = 10 * 1024 * 1024
# aiosmtpd logs every connection at INFO and every login at WARNING (a deprecation notice of its
# own): chatter from inside the emulator, not something a Clarion operator can act on.
logging.getLogger("mail.log").setLevel(logging.ERROR)
# What each magic local-part prefix answers to RCPT (module docstring).
MAGIC_REPLIES = {
    "dead": "550 5.1.1 <{address}>: Recipient address rejected: User unknown in local recipient "
    "table",
    "bad": "553 5.1.3 <{address}>: Recipient address rejected: mailbox name not allowed",
    "busy": "451 4.3.0 <{address}>: Temporary lookup failure, try again later",
}


@dataclass(frozen=True, kw_only=True)
class ReceivedMail:
    """A message the emulator accepted, as its envelope and data arrived."""

    sender: str
    recipients: list[str]
    data: bytes
    # The AUTH login the client used, None without AUTH.
    user: str | None
    # Whether the connection was encrypted (STARTTLS or implicit TLS).
    tls: bool
    queue_id: str

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)


class SmtpEmulator:
    """An SMTP server on 127.0.0.1 (`start()` first) that records what it accepts."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        security: Security = "none",
        users: Mapping[str, str] | None = None,
        slow_delay: float = 5.0,
        data_size_limit: int = DATA_SIZE_LIMIT,
        keep: int | None = None,
    ) -> None:
        """`users` maps login → password; with them, MAIL needs AUTH first (530 otherwise).
        `keep` is how many of the latest accepted `messages` it keeps (None: all)."""
        self.host = host
        self.port = port
        self.security = security
        self.ca = trustme.CA()
        # What bounds each piece of state: `messages` holds at most `keep`; `_sessions` the
        # open connections (each forgotten when lost); `_users` and `_scripts` what the caller
        # put there.
        self.messages: Records[ReceivedMail] = Records(maxlen=keep)
        # Every connection accepted, for tests of connection reuse.
        self.connections = 0
        self._users = dict(users or {})
        self._slow_delay = slow_delay
        self._data_size_limit = data_size_limit
        self._scripts: dict[str, str] = {}
        self._server: asyncio.Server | None = None
        self._sessions: set[SMTP] = set()

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this emulator's certificate."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def script(self, address: str, reply: str) -> None:
        """Answer RCPT TO:<address> with `reply` (e.g. "452 4.2.2 Mailbox full") from now on."""
        self._scripts[address] = reply

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        tls = self._server_ssl_context() if self.security != "none" else None
        self._server = await loop.create_server(
            lambda: self._session(loop, tls),
            self.host,
            self.port,
            ssl=tls if self.security == "tls" else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _session(self, loop: asyncio.AbstractEventLoop, tls: ssl.SSLContext | None) -> SMTP:
        self.connections += 1
        session = _TrackedSMTP(
            self,
            hostname="smtp.clarion.test",
            tls_context=tls if self.security == "starttls" else None,
            require_starttls=self.security == "starttls",
            authenticator=self._authenticate if self._users else None,
            # Implicit TLS is TLS too; aiosmtpd only counts STARTTLS.
            auth_require_tls=self.security == "starttls",
            data_size_limit=self._data_size_limit,
            enable_SMTPUTF8=True,
            loop=loop,
        )
        self._sessions.add(session)
        return session

    def _server_ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(self.host, "localhost").configure_cert(context)
        return context

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if isinstance(data, LoginPassword):
            login, password = data.login.decode(), data.password.decode()
            expected = self._users.get(login)
            if expected is not None and hmac.compare_digest(expected, password):
                return AuthResult(success=True, auth_data=login)
        return AuthResult(success=False, handled=False)

    # --- handler hooks (aiosmtpd calls handle_<COMMAND>) ----------------------------------------

    async def handle_MAIL(  # noqa: N802 (aiosmtpd's hook name)
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self._users and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(  # noqa: N802 (aiosmtpd's hook name)
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        local = address.partition("@")[0].lower()
        reply = self._scripts.get(address) or next(
            (
                template.format(address=address)
                for prefix, template in MAGIC_REPLIES.items()
                if local.startswith(prefix)
            ),
            None,
        )
        if reply is not None:
            if reply.startswith("421") and server.transport is not None:
                # Answered first, then closed (the reply is written before this runs).
                asyncio.get_running_loop().call_soon(server.transport.close)
            return reply
        if local.startswith("slow"):
            await asyncio.sleep(self._slow_delay)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Ok"

    async def handle_DATA(  # noqa: N802 (aiosmtpd's hook name)
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        queue_id = secrets.token_hex(6).upper()
        self.messages.append(
            ReceivedMail(
                sender=str(envelope.mail_from),
                recipients=list(envelope.rcpt_tos),
                data=bytes(envelope.original_content or b""),
                user=session.auth_data if isinstance(session.auth_data, str) else None,
                tls=session.ssl is not None or self.security == "tls",
                queue_id=queue_id,
            )
        )
        return f"250 2.0.0 Ok: queued as {queue_id}"


class _TrackedSMTP(SMTP):
    """aiosmtpd's session, forgotten by the emulator once its connection is gone."""

    def __init__(self, emulator: SmtpEmulator, **options: Any) -> None:
        super().__init__(emulator, **options)
        self._emulator = emulator

    def connection_lost(self, exc: Exception | None) -> None:
        self._emulator._sessions.discard(self)
        super().connection_lost(exc)
