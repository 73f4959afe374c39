"""Telling idle workers that work was committed, and choosing the one that runs the sweeper.

Embedded (SQLite, one process): an `asyncio.Event` per claim loop, set by `notify()`, which the
API calls after a notification commits. Distributed (PostgreSQL): the same, plus one
`NOTIFY clarion_work` per `notify()` (sent after the commit, coalesced while one is in flight:
NOTIFY takes a global lock at commit, reference/architecture.md §1.1) that every worker
process `LISTEN`s to. Workers poll as well, so a lost wake-up only costs latency.

The leader (sweeper, expiry) is whoever holds a PostgreSQL session advisory lock; it passes to
another worker when its connection dies. On SQLite the one process always leads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url

from clarion.store.database import Database

log = logging.getLogger(__name__)

CHANNEL = "clarion_work"
# Arbitrary, fixed: the advisory lock every Clarion worker competes for.
LEADER_LOCK_KEY = 0x436C6172696F6E  # "Clarion"
# Seconds between attempts to (re)open a lost LISTEN or lock connection.
RECONNECT_DELAY = 1.0


class WorkSignal(Protocol):
    def subscribe(self) -> asyncio.Event:
        """An event set whenever work may have arrived; its owner clears it before claiming."""
        ...

    def notify(self) -> None:
        """Work was committed: wake the claim loops (call only after COMMIT)."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class LeaderLock(Protocol):
    async def acquire(self) -> bool:
        """Whether this process leads now (try to become leader if nobody does)."""
        ...

    async def close(self) -> None: ...


class LocalSignal:
    """Wake-ups within one process."""

    def __init__(self) -> None:
        self._events: list[asyncio.Event] = []

    def subscribe(self) -> asyncio.Event:
        event = asyncio.Event()
        self._events.append(event)
        return event

    def notify(self) -> None:
        self._wake()

    def _wake(self) -> None:
        for event in self._events:
            event.set()

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


class PostgresSignal(LocalSignal):
    """Wake-ups across processes: NOTIFY on `notify()`, and LISTEN when `listen` (workers)."""

    def __init__(self, dsn: str, *, listen: bool) -> None:
        super().__init__()
        self._dsn = dsn
        self._listen = listen
        self._wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def notify(self) -> None:
        self._wake()
        self._wanted.set()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="clarion-work-signal")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self._serve()
            except Exception as exc:
                log.warning("work signal connection lost (%r); polling until it is back", exc)
            # Whatever was missed meanwhile: have everyone look.
            self._wake()
            await asyncio.sleep(RECONNECT_DELAY)

    async def _serve(self) -> None:
        connection = await asyncpg.connect(self._dsn)
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _conn: lost.set())
        try:
            if self._listen:
                await connection.add_listener(CHANNEL, lambda *_args: self._wake())
            while not lost.is_set():
                wanted = asyncio.create_task(self._wanted.wait())
                gone = asyncio.create_task(lost.wait())
                try:
                    await asyncio.wait({wanted, gone}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    wanted.cancel()
                    gone.cancel()
                if self._wanted.is_set():
                    # Everything notified until now is covered by this one NOTIFY.
                    self._wanted.clear()
                    await connection.execute("SELECT pg_notify($1, '')", CHANNEL)
        finally:
            with contextlib.suppress(Exception):
                await connection.close(timeout=2)


class SoleLeader:
    async def acquire(self) -> bool:
        return True

    async def close(self) -> None:
        pass


class PostgresLeader:
    """Leads while holding a session advisory lock on a connection of its own."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._connection: asyncpg.Connection | None = None
        self._held = False

    async def acquire(self) -> bool:
        try:
            if self._connection is None or self._connection.is_closed():
                self._held = False
                self._connection = await asyncpg.connect(self._dsn)
            if not self._held:
                self._held = bool(
                    await self._connection.fetchval(
                        "SELECT pg_try_advisory_lock($1)", LEADER_LOCK_KEY
                    )
                )
            else:
                # A dead connection has released the lock; find out before acting as leader.
                await self._connection.execute("SELECT 1")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("leader lock connection failed: %s", exc)
            await self.close()
        return self._held

    async def close(self) -> None:
        self._held = False
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close(timeout=2)
            self._connection = None


def asyncpg_dsn(url: str) -> str:
    """A PostgreSQL URL as asyncpg spells it (no `+driver`)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def signal_for(database: Database, *, listen: bool) -> WorkSignal:
    """The wake-up the process needs: `listen` in processes that run workers."""
    if database.dialect == "postgresql":
        return PostgresSignal(asyncpg_dsn(database.url), listen=listen)
    return LocalSignal()


def leader_for(database: Database) -> LeaderLock:
    if database.dialect == "postgresql":
        return PostgresLeader(asyncpg_dsn(database.url))
    return SoleLeader()
