"""The portal's session: one encrypted cookie, no server-side state.

The cookie is a Fernet token (AES-CBC + HMAC, with its issue time) under a key derived from the
instance key for this purpose only. It holds the CSRF token of the browser, and once signed in,
who signed in: the SID used (account or API key), the account, and a fingerprint of the
credential's digest, so rotating an auth token or deleting a key ends its sessions at the next
request. It is re-issued on every page, so `IDLE_SECONDS` without a request ends a session;
`MAX_SECONDS` after sign-in it ends anyway.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from cryptography.fernet import Fernet, InvalidToken

from clarion.store.accounts import Principal
from clarion.vault import Vault

COOKIE = "clarion_portal"
IDLE_SECONDS = 30 * 60
MAX_SECONDS = 12 * 60 * 60
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
        )
