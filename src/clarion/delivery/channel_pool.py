"""One open `Channel` per credential, built on first use by the composition root's factory.

Channels are expensive to build and cheap to share (an HTTP/2 connection, a cached OAuth token),
so every delivery on a credential goes through the same one. A credential edited through the API
gets a fresh channel within `refresh_interval` seconds; the old one is closed once sends on it
had time to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clarion import credential_types, errors
from clarion.channels.base import Channel
from clarion.store import queue
from clarion.store.database import Database
from clarion.vault import Vault

log = logging.getLogger(__name__)

# How often cached channels are checked against their credential's `date_updated`, by default.
REFRESH_INTERVAL = 30.0
# How long a replaced channel stays open for the sends already using it, in seconds.
RETIRE_GRACE = 60.0


@dataclass(frozen=True, kw_only=True)
class Credential:
    """A credential as a channel needs it: the secret opened, nothing else of the account's."""

    id: int
    sid: str
    type: str
    sandbox: bool | None
    # Keyed by API parameter name, as clarion.credential_types stores them.
    settings: dict[str, Any]
    secret: dict[str, str]


class ChannelUnavailableError(Exception):
    """No channel can be built for a credential; its deliveries fail with `code`, unsent."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# Builds the channel for one credential (e.g. APNs token auth aimed at the sandbox host). May
# raise ChannelUnavailableError, e.g. for a credential type no adapter handles yet.
ChannelFactory = Callable[[Credential], Channel]
# The channel for a binding type when neither the binding nor its service names a credential
# (`clarion serve --sandbox` answers with an emulator's); None keeps Notify's 52002 failure.
Fallback = Callable[[str], Channel | None]


class ChannelPool:
    def __init__(
        self,
        database: Database,
        *,
        factory: ChannelFactory,
        vault: Vault,
        refresh_interval: float = REFRESH_INTERVAL,
    ) -> None:
        self._database = database
        self._factory = factory
        self._vault = vault
        self._refresh_interval = refresh_interval
        # credential id → (its date_updated, the channel or why there is none)
        self._entries: dict[int, tuple[object, Channel | ChannelUnavailableError]] = {}
        # credential id → its RateLimit in messages per second, for those that have one
        self._rate_limits: dict[int, float] = {}
        self._loading: dict[int, asyncio.Future[None]] = {}
        self._checked = time.monotonic()
        self._retiring: set[asyncio.Task[None]] = set()

    async def get(self, credential_id: int) -> Channel:
        """The channel of `credential_id`; raises ChannelUnavailableError."""
        if time.monotonic() - self._checked >= self._refresh_interval:
            self._checked = time.monotonic()
            await self._refresh()
        entry = self._entries.get(credential_id)
        if entry is None:
            await self._load(credential_id)
            entry = self._entries[credential_id]
        channel = entry[1]
        if isinstance(channel, ChannelUnavailableError):
            raise channel
        return channel

    def rate_limit(self, credential_id: int) -> float | None:
        """Messages per second allowed on the credential (known once `get` has loaded it)."""
        return self._rate_limits.get(credential_id)

    async def _load(self, credential_id: int) -> None:
        """Build the channel once, however many deliveries ask for it at the same moment."""
        pending = self._loading.get(credential_id)
        if pending is not None:
            await asyncio.shield(pending)
            return
        pending = asyncio.get_running_loop().create_future()
        self._loading[credential_id] = pending
        try:
            rows = await self._database.read(
                lambda conn: queue.load_credentials(conn, [credential_id])
            )
            row = rows.get(credential_id)
            if row is None:
                built: Channel | ChannelUnavailableError = ChannelUnavailableError(
                    str(errors.INVALID_CREDENTIAL_SID), "The credential no longer exists"
                )
                version: object = None
            else:
                built, version = self._build(row), row.date_updated
                if credential_types.RATE_LIMIT in row.settings:
                    self._rate_limits[credential_id] = credential_types.rate_limit(
                        row.settings[credential_types.RATE_LIMIT]
                    )
            self._entries[credential_id] = (version, built)
        finally:
            del self._loading[credential_id]
            pending.set_result(None)

    def _build(self, row: queue.SealedCredential) -> Channel | ChannelUnavailableError:
        try:
            secret = json.loads(self._vault.open(row.secret_sealed)) if row.secret_sealed else {}
        except ValueError as exc:
            return ChannelUnavailableError(str(errors.INVALID_CREDENTIAL_SID), str(exc))
        credential = Credential(
            id=row.id,
            sid=row.sid,
            type=row.type,
            sandbox=row.sandbox,
            settings=row.settings,
            secret=secret,
        )
        try:
            return self._factory(credential)
        except ChannelUnavailableError as exc:
            return exc
        except Exception as exc:
            # A credential that passed the API's checks but that no channel can use.
            log.exception("cannot build a channel for credential %s", row.sid)
            return ChannelUnavailableError(
                str(errors.INVALID_CREDENTIAL_TYPE), f"The credential cannot be used: {exc}"
            )

    async def _refresh(self) -> None:
        """Drop entries whose credential changed or vanished; they are rebuilt on next use."""
        ids = list(self._entries)
        if not ids:
            return
        versions = await self._database.read(lambda conn: queue.credential_versions(conn, ids))
        for credential_id in ids:
            version, channel = self._entries[credential_id]
            if versions.get(credential_id) != version:
                del self._entries[credential_id]
                self._rate_limits.pop(credential_id, None)
                if not isinstance(channel, ChannelUnavailableError):
                    self._retire(channel)

    def _retire(self, channel: Channel) -> None:
        async def close_later() -> None:
            try:
                await asyncio.sleep(RETIRE_GRACE)
            finally:
                await channel.close()

        task = asyncio.create_task(close_later())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        channels = [c for _, c in self._entries.values() if not isinstance(c, Exception)]
        self._entries.clear()
        for channel in channels:
            try:
                await channel.close()
            except Exception:
                log.exception("closing a channel failed")
