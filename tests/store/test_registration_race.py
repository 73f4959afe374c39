"""Two API processes registering the same address at once end with one binding, not an error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy import Connection, func, select

from clarion.store import bindings
from clarion.store.bindings import Registration
from clarion.store.database import Database
from clarion.store.tables import binding, service

ADDRESS = "ab" * 32


@pytest.fixture
async def second_process(database_url: str) -> AsyncIterator[Database]:
    """Another handle on the same database, with its own connections and group commit."""
    other = Database(database_url)
    await other.start()
    yield other
    await other.close()


async def test_concurrent_registrations_of_one_address_all_succeed(
    database: Database, second_process: Database, service_sid: str
) -> None:
    service_id = await database.read(
        lambda conn: conn.execute(
            select(service.c.id).where(service.c.sid == service_sid)
        ).scalar_one()
    )

    def register(identity: str) -> Callable[[Connection], dict[str, Any]]:
        def op(conn: Connection) -> dict[str, Any]:
            return bindings.register(
                conn,
                service_id=service_id,
                reg=Registration(
                    identity=identity,
                    binding_type="apn",
                    address=ADDRESS,
                    tags=["race"],
                    notification_protocol_version="3",
                    credential_id=None,
                    endpoint=None,
                ),
            )

        return op

    results = await asyncio.gather(
        *((database if n % 2 else second_process).write(register(f"user-{n}")) for n in range(40))
    )

    sids = {result["sid"] for result in results}
    assert len(sids) == 1
    count = await database.read(
        lambda conn: conn.scalar(
            select(func.count()).where(
                binding.c.service_id == service_id, binding.c.address == ADDRESS
            )
        )
    )
    assert count == 1
