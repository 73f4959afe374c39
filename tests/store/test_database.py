"""Group commit: concurrent `Database.write` operations share a transaction, not their failures.

Every API write goes through `Database.write`. Many requests are committed together, but each
one must behave as if it had a transaction of its own: its result or its exception reaches its
caller, and a failing request never undoes (or blocks) the others in its batch.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from datetime import datetime

import pytest
from sqlalchemy import Connection, insert, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import IntegrityError

from clarion.store.clock import utcnow
from clarion.store.database import Database
from clarion.store.dialect import sqlite_time
from clarion.store.tables import account


class RefusedError(Exception):
    """What a request's operation raises after it has already written a row."""


def new_marker() -> str:
    return f"gc-{secrets.token_hex(6)}"


def insert_account(conn: Connection, name: str, sid: str | None = None) -> str:
    """Writes one row identified by `name`; returns the SID it was stored under."""
    sid = sid or "AC" + secrets.token_hex(16)
    now = utcnow()
    conn.execute(
        insert(account).values(
            sid=sid,
            friendly_name=name,
            auth_token_sealed="sealed",
            auth_token_digest="0" * 64,
            date_created=now,
            date_updated=now,
        )
    )
    return sid


async def stored_names(database: Database, prefix: str) -> set[str]:
    def names(conn: Connection) -> set[str]:
        rows = conn.execute(
            select(account.c.friendly_name).where(account.c.friendly_name.startswith(prefix))
        )
        return {name for (name,) in rows}

    return await database.read(names)


class Recorder:
    """Operations that remember the connection they ran on, to show they shared a batch."""

    def __init__(self) -> None:
        self.connections: list[Connection] = []

    def writer(self, name: str, *, fail: bool = False) -> Callable[[Connection], str]:
        def op(conn: Connection) -> str:
            self.connections.append(conn)
            sid = insert_account(conn, name)
            if fail:
                raise RefusedError(name)
            return sid

        return op

    def shared_one_transaction(self) -> bool:
        # The list keeps every connection alive, so equal ids mean the same object.
        return len({id(conn) for conn in self.connections}) == 1


async def test_many_concurrent_writes_all_complete(database: Database) -> None:
    marker = new_marker()

    async def op(index: int) -> str:
        return await database.write(lambda conn: insert_account(conn, f"{marker}-{index}"))

    sids = await asyncio.gather(*(op(index) for index in range(50)))
    assert len(set(sids)) == 50
    assert all(sid.startswith("AC") for sid in sids)
    assert await stored_names(database, marker) == {f"{marker}-{index}" for index in range(50)}


async def test_each_caller_receives_its_own_operations_result(database: Database) -> None:
    marker = new_marker()

    async def op(index: int) -> tuple[int, int]:
        def run(conn: Connection) -> int:
            insert_account(conn, f"{marker}-{index}")
            return index * 10

        return index, await database.write(run)

    results = await asyncio.gather(*(op(index) for index in range(20)))
    assert all(result == index * 10 for index, result in results)


async def test_failing_operation_in_a_batch_does_not_roll_back_the_others(
    database: Database,
) -> None:
    marker = new_marker()
    recorder = Recorder()
    ops = [recorder.writer(f"{marker}-{index}", fail=index == 7) for index in range(20)]
    outcomes = await asyncio.gather(
        *(database.write(op) for op in ops),
        return_exceptions=True,
    )
    assert recorder.shared_one_transaction(), "the writes were not committed as one batch"
    assert isinstance(outcomes[7], RefusedError)
    assert all(isinstance(outcome, str) for index, outcome in enumerate(outcomes) if index != 7)
    expected = {f"{marker}-{index}" for index in range(20) if index != 7}
    assert await stored_names(database, marker) == expected


async def test_database_error_in_a_batch_does_not_roll_back_the_others(
    database: Database,
) -> None:
    """On PostgreSQL a failed statement aborts the whole transaction unless it is contained."""
    marker = new_marker()
    taken = await database.write(lambda conn: insert_account(conn, f"{marker}-existing"))
    recorder = Recorder()

    def duplicate(conn: Connection) -> str:
        recorder.connections.append(conn)
        insert_account(conn, f"{marker}-duplicate-first-row")
        return insert_account(conn, f"{marker}-duplicate", sid=taken)

    ops = [recorder.writer(f"{marker}-{index}") for index in range(10)]
    ops.insert(5, duplicate)
    outcomes = await asyncio.gather(
        *(database.write(op) for op in ops),
        return_exceptions=True,
    )
    assert recorder.shared_one_transaction(), "the writes were not committed as one batch"
    assert isinstance(outcomes[5], IntegrityError)
    assert sum(isinstance(outcome, str) for outcome in outcomes) == 10
    expected = {f"{marker}-existing"} | {f"{marker}-{index}" for index in range(10)}
    assert await stored_names(database, marker) == expected


async def test_failing_operations_exception_reaches_its_caller(database: Database) -> None:
    marker = new_marker()
    recorder = Recorder()

    async def fail_in_batch() -> None:
        with pytest.raises(RefusedError, match=f"^{marker}-failing$"):
            await database.write(recorder.writer(f"{marker}-failing", fail=True))

    await asyncio.gather(
        fail_in_batch(),
        *(database.write(recorder.writer(f"{marker}-{index}")) for index in range(5)),
    )
    assert recorder.shared_one_transaction(), "the writes were not committed as one batch"


async def test_failing_operation_alone_writes_nothing(database: Database) -> None:
    marker = new_marker()
    with pytest.raises(RefusedError):
        await database.write(Recorder().writer(f"{marker}-alone", fail=True))
    assert await stored_names(database, marker) == set()


async def test_writes_after_a_failure_still_commit(database: Database) -> None:
    """A failure must not leave the writer stuck or its connection in an aborted state."""
    marker = new_marker()
    taken = await database.write(lambda conn: insert_account(conn, f"{marker}-first"))
    with pytest.raises(IntegrityError):
        await database.write(lambda conn: insert_account(conn, f"{marker}-dup", sid=taken))
    await database.write(lambda conn: insert_account(conn, f"{marker}-after"))
    assert await stored_names(database, marker) == {f"{marker}-first", f"{marker}-after"}


@pytest.mark.parametrize(
    "value", [datetime(2026, 11, 26, 20, 5, 7, 123456), datetime(2026, 1, 2, 3, 4, 5)]
)
def test_sqlite_time_is_how_sqlalchemy_stores_a_time_in_sqlite(value: datetime) -> None:
    process = sqlite.DATETIME().bind_processor(sqlite.dialect())
    assert process is not None
    assert sqlite_time(value) == process(value)
