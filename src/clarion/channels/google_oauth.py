"""OAuth2 access tokens for a Google service account (JWT-bearer grant, RFC 7523).

FCM HTTP v1 wants a bearer token that lives about an hour (providers.md §2.1). Granting one per
send would double the requests, so every send of a credential shares one token, refreshed shortly
before it expires by a single grant however many sends are waiting for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, Final

import aiohttp
import jwt
import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

# providers.md §2.1: the scope FCM HTTP v1 requires, and Google's token endpoint, used when the
# service-account JSON names none (an emulator is reached by naming its URL there).
FCM_SCOPE: Final = "https://www.googleapis.com/auth/firebase.messaging"
GOOGLE_OAUTH_ENDPOINT: Final = "https://oauth2.googleapis.com/token"
JWT_BEARER_GRANT: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# providers.md §2.1: the assertion may live at most one hour (exp ≤ iat + 3600).
ASSERTION_LIFETIME: Final = 3600
# A token is replaced this long before it expires (at most a tenth of its life), so no send
# leaves with a token that dies on the way.
REFRESH_MARGIN: Final = 60.0


class GrantError(Exception):
    """The token endpoint issued no token."""


class GrantRefusedError(GrantError):
    """The token endpoint rejected the service account (e.g. `invalid_grant`): a credential
    problem that no retry fixes."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error


class GrantUnavailableError(GrantError):
    """The token endpoint failed in a way worth retrying later (5xx, 429)."""


class _TokenAnswer(msgspec.Struct):
    access_token: str
    expires_in: float


class _ErrorAnswer(msgspec.Struct):
    error: str = "unknown_error"
    error_description: str = ""


class ServiceAccountTokens:
    """The current access token of one service account, granted on demand and cached."""

    def __init__(self, service_account: Mapping[str, Any], *, scope: str = FCM_SCOPE) -> None:
        key = serialization.load_pem_private_key(
            str(service_account["private_key"]).encode(), password=None
        )
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("a service account's private_key must be an RSA key")
        self._key = key
        self._key_id: str | None = service_account.get("private_key_id")
        self._email = str(service_account["client_email"])
        self._token_uri = str(service_account.get("token_uri") or GOOGLE_OAUTH_ENDPOINT)
        self._scope = scope
        self._token: str | None = None
        self._refresh_at = 0.0
        self._grant: asyncio.Future[str] | None = None

    async def access_token(self, session: aiohttp.ClientSession) -> str:
        """A valid token; raises GrantError (or aiohttp/timeout errors) when none can be had."""
        if self._token is not None and time.monotonic() < self._refresh_at:
            return self._token
        if self._grant is None:
            self._grant = asyncio.ensure_future(self._request_token(session))
            self._grant.add_done_callback(self._grant_finished)
        # Shielded: one waiter giving up must not cancel the grant the others are waiting on.
        return await asyncio.shield(self._grant)

    def invalidate(self, token: str) -> None:
        """Forget `token` after the API refused it, unless a newer token already replaced it."""
        if token == self._token:
            self._token = None

    def _grant_finished(self, grant: asyncio.Future[str]) -> None:
        self._grant = None
        if not grant.cancelled():
            # Marks a failure as seen even if every waiter has gone, so asyncio does not log it.
            grant.exception()

    async def _request_token(self, session: aiohttp.ClientSession) -> str:
        started = time.monotonic()
        form = {"grant_type": JWT_BEARER_GRANT, "assertion": self._assertion()}
        async with session.post(self._token_uri, data=form) as response:
            status, body = response.status, await response.read()
        if status == 200:
            try:
                answer = msgspec.json.decode(body, type=_TokenAnswer)
            except msgspec.DecodeError as exc:
                raise GrantUnavailableError(
                    f"token endpoint answered an unreadable token: {exc}"
                ) from exc
            margin = min(REFRESH_MARGIN, answer.expires_in / 10)
            self._token = answer.access_token
            self._refresh_at = started + answer.expires_in - margin
            return answer.access_token
        if status == 429 or status >= 500:
            raise GrantUnavailableError(f"token endpoint answered HTTP {status}")
        try:
            refusal = msgspec.json.decode(body, type=_ErrorAnswer)
        except msgspec.DecodeError:
            refusal = _ErrorAnswer(error=f"http_{status}")
        raise GrantRefusedError(refusal.error, refusal.error_description)

    def _assertion(self) -> str:
        now = int(time.time())
        claims = {
            "iss": self._email,
            "scope": self._scope,
            "aud": self._token_uri,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
        }
        headers = {"kid": self._key_id} if self._key_id else None
        return jwt.encode(claims, self._key, algorithm="RS256", headers=headers)
