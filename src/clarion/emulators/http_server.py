"""The aiohttp.web server under the HTTP/1.1 emulators (Twilio, Messenger, FCM).

Each emulator only adds its provider's routes; binding a real socket (port 0 = ephemeral),
reporting where it listens, the callbacks a provider makes on its own and shutting down without
hanging a test live here.
"""

from __future__ import annotations

import abc
import asyncio
import ssl
from collections.abc import Coroutine, Mapping
from typing import Any, Self

import aiohttp
from aiohttp import web


class Callbacks:
    """The requests an emulator makes on its own, as its provider does (Twilio's status
    callbacks, Messenger's webhooks). Each runs in a background task, so it never holds up the
    answer that caused it; `close()` cancels those still running."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def client(self) -> aiohttp.ClientSession:
        """Made on first use: aiohttp binds a session to the running loop."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        return self._session

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def post(self, url: str, *, data: Any, headers: Mapping[str, str]) -> int | None:
        """The receiver's HTTP status, or None when `url` could not be reached."""
        try:
            async with self.client().post(url, data=data, headers=headers) as response:
                return response.status
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None


class AiohttpEmulator(abc.ABC):
    """A provider's HTTP API on `url` once `start()` has bound it; `close()` stops it and the
    callbacks it was making."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        shutdown_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`shutdown_timeout`: seconds `close()` lets open requests finish before it cuts them
        off. Never 0: aiohttp reads 0 as no limit at all, and would wait for every one.
        `ssl_context` serves https, for a provider whose addresses must be https URLs (web push
        endpoints)."""
        self.host = host
        self._ssl_context = ssl_context
        self.port = port
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self._callbacks = Callbacks()

    @property
    def url(self) -> str:
        if self._runner is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        scheme = "http" if self._ssl_context is None else "https"
        return f"{scheme}://{self.host}:{self.port}"

    @abc.abstractmethod
    def routes(self, app: web.Application) -> None:
        """Add the provider's routes (and any middleware) to `app`."""

    async def start(self) -> None:
        app = web.Application()
        self.routes(app)
        # A client that gives up cancels its own request, as it would on the real provider.
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=self._shutdown_timeout,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self._ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        # The server first, so that no request still being answered starts a new callback.
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._callbacks.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
