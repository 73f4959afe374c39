"""The pooled HTTP/1.1 client the JSON and form providers share (Twilio, Messenger, FCM).

One keep-alive aiohttp session per channel (DESIGN.md: ≈ 64 connections per host). The push
providers that need HTTP/2 use clarion.channels.http2 instead.

Under a policy that refuses private destinations (clarion.destinations), the session's
connector checks every address it connects to: a resolver wrapper checks what a host name
resolves to (so the error names the host), and a socket factory checks the address of every
socket opened, which also covers literal IPs (aiohttp resolves those without the resolver) and
redirects. Both raise DestinationNotAllowedError out of the request.
"""

from __future__ import annotations

import email.utils
import math
import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohappyeyeballs import AddrInfoType, SocketFactoryType
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from clarion.destinations import PERMISSIVE, DestinationPolicy


class PooledSession:
    """A channel's aiohttp session, made on first use: aiohttp binds it to the running loop.

    A `session` given by the caller (e.g. shared by several credentials) is used as it is and
    left for the caller to close: `limit_per_host`, `limit` and `timeout` only shape the session
    made here.
    """

    def __init__(
        self,
        *,
        limit_per_host: int,
        timeout: aiohttp.ClientTimeout,
        # The cap over all hosts, for a channel that talks to more than one; aiohttp's default.
        limit: int = 100,
        session: aiohttp.ClientSession | None = None,
        # Applies to the session made here, not to a `session` given.
        destinations: DestinationPolicy = PERMISSIVE,
    ) -> None:
        self._destinations = destinations
        self._limit_per_host = limit_per_host
        self._limit = limit
        self._timeout = timeout
        self._session = session
        self._owns_session = session is None

    def client(self) -> aiohttp.ClientSession:
        if self._session is None:
            checked = not self._destinations.allow_private
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._limit,
                    limit_per_host=self._limit_per_host,
                    resolver=CheckedResolver(self._destinations) if checked else None,
                    socket_factory=checked_socket_factory(self._destinations) if checked else None,
                ),
                timeout=self._timeout,
            )
        return self._session

    async def close(self) -> None:
        """Close the session made here; a later `client()` makes a new one."""
        if self._session is not None and self._owns_session:
            await self._session.close()
            self._session = None


class CheckedResolver(AbstractResolver):
    """aiohttp's default resolver, refusing a host any of whose addresses the policy refuses."""

    def __init__(self, destinations: DestinationPolicy) -> None:
        self._inner = DefaultResolver()
        self._destinations = destinations

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        self._destinations.check(host, [result["host"] for result in results])
        return results

    async def close(self) -> None:
        await self._inner.close()


def checked_socket_factory(destinations: DestinationPolicy) -> SocketFactoryType:
    """A socket factory (aiohappyeyeballs) that refuses to open a socket to a refused address."""

    def make(addr_info: AddrInfoType) -> socket.socket:
        family, type_, proto, _, address = addr_info
        destinations.check(str(address[0]), [str(address[0])])
        return socket.socket(family=family, type=type_, proto=proto)

    return make


async def json_object(response: aiohttp.ClientResponse) -> Mapping[str, Any]:
    """The JSON object of an answer, or nothing: a proxy's HTML error page must not raise."""
    try:
        body = await response.json(content_type=None)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date (RFC 9110 §10.2.3);
    None when absent or unreadable, so the engine's own backoff applies."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
