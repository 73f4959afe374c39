"""Where store functions run, on either engine, and the group commit every API write uses.

Store functions are plain synchronous functions of a SQLAlchemy `Connection`; `Database` decides
where they run:

- **SQLite** (embedded default): in threads of our own on pysqlite connections. Through an async
  driver every statement costs several thread hand-offs (aiosqlite measured ~1 ms a statement on
  this machine); here a whole read, or a whole batch of writes, is one hand-off. SQLite allows one
  writer, so one connection in one thread does all writes, each transaction opened with
  `BEGIN IMMEDIATE` so lock contention never turns into `SQLITE_BUSY`; reads use a pool in WAL
  mode.
- **PostgreSQL**: on asyncpg, through `AsyncConnection.run_sync`, so many requests share the
  event loop and a connection pool.

Writes are *group-committed* (reference/architecture.md §2.4, §3.2): requests queue an operation,
one task runs every queued operation in one transaction — each inside a savepoint, so one
request's failure never undoes another's — and answers each caller only after COMMIT. One fsync
then serves dozens of requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

T = TypeVar("T")
Op = Callable[[Connection], T]

# Requests answered per transaction at most; bounds one commit's latency.
MAX_BATCH = 256
SQLITE_READERS = 4


def engine_url(url: str) -> str:
    """Map the operator's URL (`sqlite:///…`, `postgresql://…`) to the driver Clarion uses."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        parsed = parsed.set(drivername="sqlite+pysqlite")
    elif parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed.render_as_string(hide_password=False)


def _sqlite_engine(url: str, *, writer: bool) -> Engine:
    engine = create_engine(
        url,
        pool_size=1 if writer else SQLITE_READERS,
        max_overflow=0,
        # Connections move between our threads, never used by two at once.
        connect_args={"check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from pysqlite, so BEGIN is ours (and savepoints work).
        dbapi_connection.isolation_level = None
        for pragma in (
            "journal_mode=WAL",
            "busy_timeout=5000",
            "foreign_keys=ON",
            "temp_store=MEMORY",
            # KiB of page cache per connection (one writer, SQLITE_READERS readers): the OS
            # caches the file too, and RSS must stay small with millions of rows.
            f"cache_size=-{16384 if writer else 4096}",
        ):
            dbapi_connection.execute(f"PRAGMA {pragma}")

    begin = "BEGIN IMMEDIATE" if writer else "BEGIN"

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        # IMMEDIATE takes the write lock up front; a deferred transaction that upgrades later
        # gets SQLITE_BUSY without waiting for busy_timeout.
        connection.exec_driver_sql(begin)

    return engine


@dataclass
class _Pending:
    op: Op[Any]
    future: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Database:
    """The process's handle on the store: `read(fn)` for queries, `write(fn)` for changes."""

    def __init__(self, url: str) -> None:
        self.url = engine_url(url)
        self.dialect = make_url(self.url).get_backend_name()
        self._sqlite_writer: Engine | None = None
        self._sqlite_reader: Engine | None = None
        self._postgres: AsyncEngine | None = None
        if self.dialect == "sqlite":
            self._sqlite_writer = _sqlite_engine(self.url, writer=True)
            self._sqlite_reader = _sqlite_engine(self.url, writer=False)
            self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="clarion-writer")
            self._read_threads = ThreadPoolExecutor(SQLITE_READERS, "clarion-reader")
        else:
            self._postgres = create_async_engine(self.url, pool_size=10, max_overflow=10)
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name="clarion-group-commit")

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        if self._postgres is not None:
            await self._postgres.dispose()
        else:
            assert self._sqlite_writer is not None
            assert self._sqlite_reader is not None
            self._write_thread.shutdown()
            self._read_threads.shutdown()
            self._sqlite_writer.dispose()
            self._sqlite_reader.dispose()

    async def read(self, fn: Op[T]) -> T:
        """Run `fn` in a read transaction; it sees everything committed before it began."""
        if self._postgres is not None:
            async with self._postgres.connect() as connection:
                return await connection.run_sync(fn)
        return await self._in_thread(self._read_threads, self._sqlite_reader, fn)

    async def transaction(self, fn: Op[T], *, durable: bool = True) -> T:
        """Run `fn` in a transaction of its own, outside the group commit (CLI, migrations,
        the delivery engine).

        `durable=False` commits without waiting for the disk (SQLite `synchronous=NORMAL`,
        PostgreSQL `synchronous_commit = off`): a power loss, or a PostgreSQL crash, may undo
        the last such commits, never corrupt anything. Only for work whose loss the queue
        recovers from anyway: an undone claim or result leaves its deliveries `sending` until
        their lease runs out, and they are sent again as after a worker crash.
        """
        if self._postgres is not None:
            async with self._postgres.begin() as connection:
                if not durable:
                    await connection.exec_driver_sql("SET LOCAL synchronous_commit = off")
                return await connection.run_sync(fn)
        return await self._in_thread(
            self._write_thread, self._sqlite_writer, fn, pragma=_SYNCHRONOUS[durable]
        )

    async def write(self, fn: Op[T]) -> T:
        """Run `fn` in the next group commit; returns its result once it is durable.

        `fn` must only talk to the database: it runs in a transaction shared with other
        requests. An exception it raises rolls back its own savepoint and is re-raised here.
        """
        if self._writer is None:
            raise RuntimeError("Database.start() was not called")
        pending = _Pending(fn)
        self._queue.put_nowait(pending)
        result: T = await asyncio.shield(pending.future)
        return result

    async def _in_thread(
        self,
        pool: ThreadPoolExecutor,
        engine: Engine | None,
        fn: Op[T],
        *,
        pragma: str | None = None,
    ) -> T:
        assert engine is not None

        def run() -> T:
            with engine.connect() as connection:
                if pragma is not None:
                    # Straight to sqlite3, before BEGIN: a setting like `synchronous` is the
                    # connection's, not the transaction's.
                    driver = connection.connection.driver_connection
                    assert driver is not None
                    driver.execute(pragma)
                with connection.begin():
                    return fn(connection)

        return await asyncio.get_running_loop().run_in_executor(pool, run)

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                outcomes = await self.transaction(functools.partial(_run_batch, batch=batch))
            except asyncio.CancelledError:
                for pending in batch:
                    _settle(pending, (False, RuntimeError("database is shutting down")))
                raise
            except Exception as exc:
                outcomes = [(False, exc)] * len(batch)
            for pending, outcome in zip(batch, outcomes, strict=True):
                _settle(pending, outcome)


# A 201 must survive power loss, not only a crash; the engine's own bookkeeping need not.
_SYNCHRONOUS = {True: "PRAGMA synchronous=FULL", False: "PRAGMA synchronous=NORMAL"}


def _run_batch(conn: Connection, *, batch: list[_Pending]) -> list[tuple[bool, Any]]:
    outcomes: list[tuple[bool, Any]] = []
    for pending in batch:
        # Plain SAVEPOINT statements: SQLAlchemy's begin_nested() compiles a new savepoint
        # clause for every call, which cost as much as the rest of a binding registration.
        conn.exec_driver_sql("SAVEPOINT op")
        try:
            result = pending.op(conn)
        except Exception as exc:
            conn.exec_driver_sql("ROLLBACK TO SAVEPOINT op")
            outcomes.append((False, exc))
        else:
            outcomes.append((True, result))
        conn.exec_driver_sql("RELEASE SAVEPOINT op")
    return outcomes


def _settle(pending: _Pending, outcome: tuple[bool, Any]) -> None:
    if pending.future.done():
        return
    ok, value = outcome
    if ok:
        pending.future.set_result(value)
    else:
        pending.future.set_exception(value)
