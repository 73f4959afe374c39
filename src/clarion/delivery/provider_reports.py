"""Reports providers push over a channel's own connection (SMPP delivery receipts), written to
the deliveries they name.

Twilio and Messenger report through webhooks the API applies; an SMSC reports on the bind the
channel holds, so the channel hands each receipt to `ProviderReports.submit` (non-blocking) and
this writer applies them in batches, one transaction per batch. A receipt can overtake the
worker's own record of the send (an SMSC answers submit_sm and may report delivery before the
worker has stored the message id): a report that matches no delivery yet is tried again a few
times over about `RETRY_DELAYS` seconds before it is dropped. Reports are scoped to the
account that owns the reporting credential, as webhooks are.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import heapq
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from sqlalchemy import Connection

from clarion.store import credentials, deliveries
from clarion.store.clock import utcnow
from clarion.store.database import Database

log = logging.getLogger(__name__)

# Seconds between the tries of a report that matches no delivery yet (≈ 7.5 s in all).
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)
BATCH = 500
# Reports waiting at most; beyond it the oldest are dropped (an SMSC flooding a stopped store).
BACKLOG = 200_000


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderReport:
    credential_sid: str
    channel: str
    provider_ref: str
    # "delivered", "failed", or None for history only (store.deliveries.record_provider_report).
    status: str | None
    error_code: str | None = None
    error_message: str | None = None
    tries: int = 0


class ProviderReports:
    """Applies reports in the background; `start()` before use, `stop()` before the database
    closes."""

    def __init__(self, database: Database, *, retry_delays: Sequence[float] = RETRY_DELAYS) -> None:
        self._database = database
        self._retry_delays = tuple(retry_delays)
        self._ready: collections.deque[ProviderReport] = collections.deque()
        # A heap of (when, tiebreak, report) of reports to try again.
        self._later: list[tuple[float, int, ProviderReport]] = []
        self._order = itertools.count()
        self._wake = asyncio.Event()
        self._accounts: dict[str, int | None] = {}
        self._task: asyncio.Task[None] | None = None
        self.applied = 0
        self.dropped = 0

    def submit(self, report: ProviderReport) -> None:
        if len(self._ready) >= BACKLOG:
            self._ready.popleft()
            self.dropped += 1
        self._ready.append(report)
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="clarion-provider-reports")

    async def stop(self) -> None:
        if self._task is None:
            return
        # What has arrived is written before stopping; reports still waiting for their
        # delivery's record are given up (the SMSC has been answered already).
        with contextlib.suppress(Exception):
            await self._flush()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        while True:
            self._promote_due()
            if not self._ready:
                self._wake.clear()
                timeout = self._later[0][0] - time.monotonic() if self._later else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            try:
                await self._flush()
            except Exception:
                log.exception("writing provider reports failed; retrying in a second")
                await asyncio.sleep(1.0)

    def _promote_due(self) -> None:
        now = time.monotonic()
        while self._later and self._later[0][0] <= now:
            self._ready.append(heapq.heappop(self._later)[2])

    async def _flush(self) -> None:
        while self._ready:
            batch = [self._ready.popleft() for _ in range(min(BATCH, len(self._ready)))]
            try:
                matched = await self._database.transaction(
                    functools.partial(self._apply, batch=batch)
                )
            except Exception:
                self._ready.extendleft(reversed(batch))
                raise
            for report, found in zip(batch, matched, strict=True):
                if found:
                    self.applied += 1
                elif report.tries < len(self._retry_delays):
                    due = time.monotonic() + self._retry_delays[report.tries]
                    retry = replace(report, tries=report.tries + 1)
                    heapq.heappush(self._later, (due, next(self._order), retry))
                else:
                    self.dropped += 1
                    log.info(
                        "no %s delivery has provider id %s; its report (%s) is dropped",
                        report.channel,
                        report.provider_ref,
                        report.status or "history",
                    )

    def _apply(self, conn: Connection, *, batch: list[ProviderReport]) -> list[bool]:
        now = utcnow()
        matched = []
        for report in batch:
            if report.credential_sid not in self._accounts:
                found = credentials.for_webhook(conn, sid=report.credential_sid)
                # A credential deleted since: its reports can only match nothing.
                self._accounts[report.credential_sid] = found.account_id if found else None
            account_id = self._accounts[report.credential_sid]
            matched.append(
                account_id is not None
                and deliveries.record_provider_report(
                    conn,
                    account_id=account_id,
                    channel=report.channel,
                    provider_ref=report.provider_ref,
                    status=report.status,
                    error_code=report.error_code,
                    error_message=report.error_message,
                    now=now,
                )
            )
        return matched
