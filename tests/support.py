"""Helpers the test modules import (`from support import …`).

Not in conftest.py: `tests/e2e` and `tests/portal` have conftest modules of their own, and
`from conftest import` would get whichever of them pytest imported first.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection, update

from clarion.store import queue
from clarion.store.clock import utcnow
from clarion.store.tables import delivery, failover_chain, job, notification


@dataclass(frozen=True)
class Account:
    sid: str
    token: str


@dataclass
class Clock:
    """The wall clock, moved forward by the test (rows the store writes carry real time)."""

    offset: timedelta = field(default_factory=timedelta)

    def __call__(self) -> datetime:
        return utcnow() + self.offset

    def advance(self, **delta: float) -> None:
        self.offset += timedelta(**delta)


def closed_port() -> int:
    """A local port nothing listens on (bound, then released): connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def quiet_the_queue(
    conn: Connection, *, notifications: bool = False, failover_chains: bool = False
) -> None:
    """Other tests' work out of the way: the tests share one database per engine, so a worker
    would otherwise claim their deliveries and jobs, and their timers fire when a test moves
    time. `notifications` also completes open notifications (so none of their callbacks is
    sent); `failover_chains` exhausts waiting chains (so none of their deadlines passes)."""
    conn.execute(
        update(delivery)
        .where(delivery.c.status.in_(queue.OPEN_DELIVERY))
        .values(status="expired", lease_owner=None)
    )
    conn.execute(
        update(job).where(job.c.status.in_(queue.OPEN_JOB)).values(status="done", lease_owner=None)
    )
    if notifications:
        conn.execute(
            update(notification)
            .where(notification.c.status.in_(queue.OPEN_NOTIFICATION))
            .values(status="completed")
        )
    if failover_chains:
        conn.execute(
            update(failover_chain)
            .where(failover_chain.c.status == "waiting")
            .values(status="exhausted", deadline=None)
        )
