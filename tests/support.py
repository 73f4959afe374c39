"""Helpers the test modules import (`from support import …`).

Not in conftest.py: `tests/e2e` and `tests/portal` have conftest modules of their own, and
`from conftest import` would get whichever of them pytest imported first.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, insert, update

from clarion import sids
from clarion.store import queue
from clarion.store.clock import utcnow
from clarion.store.tables import (
    account,
    credential,
    delivery,
    failover_chain,
    job,
    notification,
    service,
)


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


@dataclass(frozen=True)
class CredentialRow:
    """A credential as `insert_service` writes it: settings as stored, the secret sealed."""

    type: str
    settings: dict[str, Any] = field(default_factory=dict)
    secret_sealed: str | None = None


def insert_service(
    conn: Connection,
    *,
    name: str,
    now: datetime,
    credentials: Mapping[str, CredentialRow] | None = None,
) -> tuple[int, dict[str, int]]:
    """A service of an account of its own, written straight to the tables (engine tests need no
    API): its id, and the ids of its `credentials`, keyed by service column such as
    `apn_credential_id`."""
    account_id = conn.scalar(
        insert(account)
        .values(
            sid=sids.new_sid(sids.ACCOUNT),
            friendly_name=name,
            auth_token_sealed="-",
            auth_token_digest="-",
            date_created=now,
            date_updated=now,
        )
        .returning(account.c.id)
    )
    ids = {
        column: int(
            conn.scalar(
                insert(credential)
                .values(
                    sid=sids.new_sid(sids.CREDENTIAL),
                    account_id=account_id,
                    type=row.type,
                    settings=row.settings,
                    secret_sealed=row.secret_sealed,
                    date_created=now,
                    date_updated=now,
                )
                .returning(credential.c.id)
            )
        )
        for column, row in (credentials or {}).items()
    }
    service_id = conn.scalar(
        insert(service)
        .values(
            sid=sids.new_sid(sids.SERVICE),
            account_id=account_id,
            default_apn_notification_protocol_version="3",
            default_gcm_notification_protocol_version="3",
            default_fcm_notification_protocol_version="3",
            default_alexa_notification_protocol_version="3",
            log_enabled=True,
            delivery_callback_enabled=False,
            date_created=now,
            date_updated=now,
            **ids,
        )
        .returning(service.c.id)
    )
    return int(service_id), ids
