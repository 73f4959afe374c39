"""Per-credential rate limits: when each send on a rate-limited credential may leave.

Slots are reserved in the database (clarion.store.send_slots), so the limit holds across every
worker process. The sends a claimed batch starts all ask for their slot in the same turn of the
event loop; `SendSlots` gathers them into one reservation per credential, so a batch of 500 SMS
costs one statement, not 500.
"""

from __future__ import annotations

import asyncio
import functools
from datetime import datetime

from clarion.store import send_slots
from clarion.store.database import Database


class SendSlots:
    def __init__(self, database: Database) -> None:
        self._database = database
        # credential id → the sends waiting to join the reservation being gathered
        self._gathering: dict[int, list[asyncio.Future[datetime]]] = {}

    async def take(self, credential_id: int, *, per_second: float, now: datetime) -> datetime:
        """The time this send may leave: its own slot of the credential's schedule."""
        gathering = self._gathering.get(credential_id)
        if gathering is not None:
            joined: asyncio.Future[datetime] = asyncio.get_running_loop().create_future()
            gathering.append(joined)
            return await joined
        others: list[asyncio.Future[datetime]] = []
        self._gathering[credential_id] = others
        # One turn of the loop: the other sends of the batch reach `take` and join.
        await asyncio.sleep(0)
        del self._gathering[credential_id]
        try:
            slots = await self._database.transaction(
                functools.partial(
                    send_slots.reserve,
                    credential_id=credential_id,
                    count=1 + len(others),
                    interval=1 / per_second,
                    now=now,
                )
            )
        except BaseException as exc:
            failure = exc if isinstance(exc, Exception) else RuntimeError("reservation cancelled")
            for future in others:
                if not future.done():
                    future.set_exception(failure)
            raise
        for future, slot in zip(others, slots[1:], strict=True):
            if not future.done():  # that send was cancelled: its slot goes unused
                future.set_result(slot)
        return slots[0]
