"""HTTP Basic authentication with an account's SID and auth token, or an API key.

The digest of each username's secret is cached for a few seconds: a request then costs one
SHA-256 instead of a database round trip, and a rotated secret stops working within `TTL`.
"""

from __future__ import annotations

import base64
import binascii
import time

from starlette.requests import Request

from clarion import errors
from clarion.store import accounts
from clarion.store.accounts import Principal
from clarion.store.database import Database
from clarion.vault import matches

TTL_SECONDS = 5.0
_MAX_CACHED = 10_000


class Authenticator:
    def __init__(self, database: Database) -> None:
        self._database = database
        self._cache: dict[str, tuple[float, Principal, str]] = {}

    async def __call__(self, request: Request) -> Principal:
        username, password = _basic_credentials(request.headers.get("authorization"))
        return await self.verify(username, password)

    async def verify(self, username: str, password: str) -> Principal:
        """The principal `username` names if `password` is its secret (also the portal's
        sign-in form); 20003 otherwise."""
        found = await self.lookup(username)
        if found is None or not matches(password, found[1]):
            raise errors.authenticate()
        return found[0]

    async def lookup(self, username: str) -> tuple[Principal, str] | None:
        """The principal `username` names and the digest its secret must match, or None."""
        cached = self._cache.get(username)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1], cached[2]
        found = await self._database.read(lambda conn: accounts.credential_digest(conn, username))
        if found is not None:
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            self._cache[username] = (now + TTL_SECONDS, *found)
        return found


def _basic_credentials(header: str | None) -> tuple[str, str]:
    if header is None or not header[:6].lower() == "basic ":
        raise errors.authenticate()
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise errors.authenticate() from exc
    username, separator, password = decoded.partition(":")
    if not separator:
        raise errors.authenticate()
    return username, password
