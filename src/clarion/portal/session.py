"""The portal's session: an encrypted cookie naming a server-side session row.

The cookie is a Fernet token (AES-CBC + HMAC, with its issue time) under a key derived from the
instance key for this purpose only. It holds the CSRF token of the browser, and once signed in,
who signed in: the SID used (account or API key), the account, a fingerprint of the
credential's digest (rotating an auth token or deleting a key ends its sessions at the next
request), and a random session key. The key names a `portal_session` row
(clarion.store.portal_sessions): signing out deletes the row, so a copy of the cookie stops
working too, and "sign out everywhere" deletes all the account's rows. The cookie is re-issued
on every page and the row's `last_seen` moved on at most once a `TOUCH_SECONDS`, so
`IDLE_SECONDS` without a request ends a session on both sides; `MAX_SECONDS` after sign-in it
ends anyway.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from cryptography.fernet import Fernet, InvalidToken

from clarion.store import portal_sessions
from clarion.store.accounts import Principal
from clarion.store.database import Database
from clarion.vault import Vault

COOKIE = "clarion_portal"
IDLE_SECONDS = 30 * 60
MAX_SECONDS = 12 * 60 * 60
# How stale a session row's `last_seen` may get: one write a minute per busy session at most.
TOUCH_SECONDS = 60
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True, kw_only=True)
class Session:
    csrf: str
    # Set once signed in.
    username: str | None = None
    account_id: int | None = None
    account_sid: str | None = None
    fingerprint: str | None = None
    signed_in_at: float | None = None
    # The random key of its `portal_session` row.
    key: str | None = None

    @property
    def principal(self) -> Principal | None:
        if self.account_id is None or self.account_sid is None:
            return None
        return Principal(account_id=self.account_id, account_sid=self.account_sid)

    def signed_in(self, *, username: str, principal: Principal, digest: str, now: float) -> Session:
        """The session after a sign-in: a new CSRF token, so one seen before is worthless."""
        return replace(
            self,
            csrf=new_csrf(),
            username=username,
            account_id=principal.account_id,
            account_sid=principal.account_sid,
            fingerprint=fingerprint(digest),
            signed_in_at=now,
            key=secrets.token_urlsafe(32),
        )


def new_csrf() -> str:
    return secrets.token_urlsafe(24)


def anonymous() -> Session:
    return Session(csrf=new_csrf())


def fingerprint(digest: str) -> str:
    """Names the credential's current secret without being usable as one."""
    return hashlib.sha256(("portal:" + digest).encode()).hexdigest()[:32]


class SessionCodec:
    """Seals sessions into cookie values and opens them, refusing stale or forged ones."""

    def __init__(self, vault: Vault, *, clock: Callable[[], float] = time.time) -> None:
        self._fernet = Fernet(base64.urlsafe_b64encode(vault.derive("portal-session")))
        self._clock = clock

    def now(self) -> float:
        return self._clock()

    def seal(self, session: Session) -> str:
        payload = {
            "c": session.csrf,
            "u": session.username,
            "a": session.account_id,
            "s": session.account_sid,
            "f": session.fingerprint,
            "t": session.signed_in_at,
            "k": session.key,
        }
        token = self._fernet.encrypt_at_time(json.dumps(payload).encode(), int(self._clock()))
        return token.decode("ascii")

    def open(self, value: str | None) -> Session | None:
        """The session in `value`; None when absent, forged, idle too long or too old."""
        if not value:
            return None
        now = self._clock()
        try:
            raw = self._fernet.decrypt_at_time(
                value.encode("ascii"), ttl=IDLE_SECONDS, current_time=int(now)
            )
            payload = json.loads(raw)
        except (InvalidToken, UnicodeEncodeError, ValueError):
            return None
        signed_in_at = payload.get("t")
        if signed_in_at is not None and now - signed_in_at > MAX_SECONDS:
            return None
        return Session(
            csrf=payload["c"],
            username=payload["u"],
            account_id=payload["a"],
            account_sid=payload["s"],
            fingerprint=payload["f"],
            signed_in_at=signed_in_at,
            # Absent from cookies sealed before sessions had rows: those are signed out.
            key=payload.get("k"),
        )


def _utc(seconds: float) -> datetime:
    """The store's time (naive UTC) for a `time.time()` value."""
    return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)


class SessionStore:
    """The server side of signed-in sessions: created at sign-in, checked on every request,
    deleted at sign-out."""

    def __init__(self, database: Database, *, clock: Callable[[], float] = time.time) -> None:
        self._database = database
        self._clock = clock

    def _idle_before(self) -> datetime:
        return _utc(self._clock() - IDLE_SECONDS)

    async def begin(self, session: Session) -> None:
        key, account_id, username = session.key, session.account_id, session.username
        if key is None or account_id is None or username is None:
            raise ValueError("only a signed-in session is stored")
        digest = portal_sessions.key_digest(key)
        now, idle_before = _utc(self._clock()), self._idle_before()
        await self._database.write(
            lambda conn: portal_sessions.create(
                conn,
                digest=digest,
                account_id=account_id,
                username=username,
                now=now,
                idle_before=idle_before,
            )
        )

    async def check(self, session: Session) -> bool:
        """Whether a signed-in session is still live: not signed out, not idle too long."""
        if session.key is None:
            return False
        digest = portal_sessions.key_digest(session.key)
        found = await self._database.read(lambda conn: portal_sessions.find(conn, digest=digest))
        if found is None or found.account_id != session.account_id:
            return False
        now = self._clock()
        seen = found.last_seen.replace(tzinfo=UTC).timestamp()
        if now - seen > IDLE_SECONDS:
            return False
        if now - seen >= TOUCH_SECONDS:
            at = _utc(now)
            await self._database.write(
                lambda conn: portal_sessions.touch(conn, digest=digest, now=at)
            )
        return True

    async def end(self, session: Session) -> None:
        if session.key is None:
            return
        digest = portal_sessions.key_digest(session.key)
        await self._database.write(lambda conn: portal_sessions.end(conn, digest=digest))

    async def end_all(self, account_id: int) -> int:
        return await self._database.write(
            lambda conn: portal_sessions.end_all(conn, account_id=account_id)
        )

    async def active(self, account_id: int) -> list[portal_sessions.Listed]:
        idle_before = self._idle_before()
        return await self._database.read(
            lambda conn: portal_sessions.list_active(
                conn, account_id=account_id, idle_before=idle_before
            )
        )

    @staticmethod
    def digest(session: Session) -> str | None:
        return None if session.key is None else portal_sessions.key_digest(session.key)
