"""Failover's timers: chains whose wait ran out unconfirmed move on to their next group.

The SQL is clarion.store.failover; this is the loop the leader runs with its other chores
(clarion.delivery.worker, `sweep_once`). The timers are rows, not tasks: a restarted or new
leader finds every one that is due, however long it was away.
"""

from __future__ import annotations

import functools
from datetime import datetime

from clarion.store import failover
from clarion.store.database import Database


async def fire_due(database: Database, *, now: datetime, batch: int = failover.TIMER_BATCH) -> int:
    """Move on every chain due at `now`, `batch` per transaction; how many were due."""
    fired = 0
    while True:
        due = await database.transaction(functools.partial(failover.fire_due, now=now, limit=batch))
        fired += due
        if due < batch:
            return fired
