"""The delivery engine's runtime: claim loops, bounded concurrent sends, batched results.

One `Worker` per process (`clarion serve` embeds one; `clarion worker` is nothing else), any
number of them on one PostgreSQL. It runs four tasks:

- the job loop claims `fanout` jobs and expands them (clarion.delivery.fanout), and
  `delivery_callback` jobs and posts them (clarion.delivery.callbacks);
- the delivery loop claims batches of due deliveries while fewer than `max_in_flight` are out,
  and starts one send per delivery (clarion.delivery.dispatcher);
- the flush loop writes finished sends back in one transaction per batch, guarded by the lease,
  and only then frees their room: results never pile up faster than they are stored;
- the sweep loop, on the leader only, returns expired leases, expires overdue deliveries, moves
  on the failover chains whose wait ran out (clarion.delivery.failover) and completes finished
  notifications.

Claims and results are committed without waiting for the disk (`Database.transaction`,
`durable=False`): one lost to a power cut leaves its deliveries to the lease sweeper, as a dead
worker does. Claim loops wait on the wake-up signal (clarion.delivery.wakeup), polling with a
back-off from `poll_min` to `poll_max` seconds. `stop()` is graceful: no new claims, sends in
flight get `stop_timeout` seconds to finish, their results are stored, and whatever was
interrupted is handed back (ambiguous, as it may have reached the provider).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import random
import secrets
import socket
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from clarion.delivery import callbacks, failover, fanout
from clarion.delivery.channel_pool import (
    REFRESH_INTERVAL,
    ChannelFactory,
    ChannelPool,
    Fallback,
)
from clarion.delivery.dispatcher import Dispatcher
from clarion.delivery.receipts import ReceiptTokens
from clarion.delivery.throttle import SendSlots
from clarion.delivery.wakeup import LeaderLock, WorkSignal
from clarion.destinations import PERMISSIVE, DestinationPolicy
from clarion.store import callbacks as store_callbacks
from clarion.store import failover as store_failover
from clarion.store import queue
from clarion.store.clock import utcnow
from clarion.store.database import Database
from clarion.store.fanout import CHUNK_SIZE
from clarion.store.queue import ClaimedDelivery, ClaimedJob, Completion, NotificationWork
from clarion.vault import Vault

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    # Deliveries per claim; batch size is what makes the queue fast (architecture.md §1.5).
    batch_size: int = 500
    # Sends started and not yet stored, at most.
    max_in_flight: int = 1000
    # A flush of fewer results than this waits up to `flush_wait` seconds for more while sends
    # are out: with slow providers (SMTP) results trickle in, and a SQLite commit costs about
    # as much as storing fifty of them.
    flush_size: int = 100
    flush_wait: float = 0.02
    # Far longer than any provider timeout, so only a dead worker ever loses a lease.
    lease: timedelta = timedelta(seconds=60)
    fanout_chunk: int = CHUNK_SIZE
    # Jobs run at the same time, at most, per kind: long fan-outs never hold up the posting of
    # delivery callbacks, nor a slow callback endpoint the fan-outs.
    max_fanouts: int = 2
    max_callback_posts: int = 4
    poll_min: float = 0.1
    poll_max: float = 2.0
    sweep_interval: float = 5.0
    stop_timeout: float = 10.0
    # How soon an edited credential's new secret is used, in seconds.
    credential_refresh: float = REFRESH_INTERVAL
    # Seconds an application's delivery callback endpoint gets to answer one batch.
    callback_timeout: float = callbacks.TIMEOUT
    # Whether delivery callback URLs may be private addresses (clarion.destinations).
    destinations: DestinationPolicy = PERMISSIVE


def worker_name() -> str:
    """Unique per process and recognisable in `lease_owner`: host, pid and a random tail."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"


class Worker:
    def __init__(
        self,
        database: Database,
        *,
        channels: ChannelFactory,
        fallback: Fallback = lambda _channel: None,
        vault: Vault,
        signal: WorkSignal,
        leader: LeaderLock,
        config: WorkerConfig | None = None,
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
        name: str | None = None,
    ) -> None:
        self.name = name or worker_name()
        self._database = database
        self._signal = signal
        self._leader = leader
        self._config = config or WorkerConfig()
        self._clock = clock
        self._pool = ChannelPool(
            database,
            factory=channels,
            vault=vault,
            refresh_interval=self._config.credential_refresh,
        )
        self._dispatcher = Dispatcher(
            self._pool,
            slots=SendSlots(database),
            receipt=ReceiptTokens(vault).mint,
            clock=clock,
            rng=rng,
            fallback=fallback,
        )
        self._stopping = asyncio.Event()
        self._callbacks = callbacks.DeliveryCallbacks(
            database,
            vault=vault,
            owner=self.name,
            clock=clock,
            lease=self._config.lease,
            stopping=self._stopping.is_set,
            timeout=self._config.callback_timeout,
            rng=rng,
            destinations=self._config.destinations,
        )
        self._handlers: dict[str, Callable[[ClaimedJob], Awaitable[None]]] = {
            "fanout": self._fanout,
            store_callbacks.KIND: self._callbacks.run,
        }
        self._job_limits = {
            "fanout": self._config.max_fanouts,
            store_callbacks.KIND: self._config.max_callback_posts,
        }
        self._closing = False
        self._loops: list[asyncio.Task[None]] = []
        self._flusher: asyncio.Task[None] | None = None
        # Claimed deliveries out of the queue: being sent, or sent and not yet stored.
        self._in_flight = 0
        self._room = asyncio.Event()
        self._sends: dict[asyncio.Task[None], int] = {}
        # Running jobs by kind.
        self._jobs: dict[str, set[asyncio.Task[None]]] = {kind: set() for kind in self._handlers}
        self._job_done = asyncio.Event()
        self._results: list[Completion] = []
        # Sends cut short by `stop()`: after the request left (ambiguous), or before.
        self._interrupted: list[ClaimedDelivery] = []
        self._unsent: list[ClaimedDelivery] = []
        # Per notification, its deliveries claimed here and not yet stored: while there are
        # any, the notification cannot be complete, and storing a batch need not ask.
        self._out: collections.Counter[int] = collections.Counter()
        self._results_ready = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._job_loop(), name=f"clarion-jobs-{self.name}"),
            asyncio.create_task(self._delivery_loop(), name=f"clarion-deliveries-{self.name}"),
            asyncio.create_task(self._sweep_loop(), name=f"clarion-sweeper-{self.name}"),
        ]
        self._flusher = asyncio.create_task(self._flush_loop(), name=f"clarion-flush-{self.name}")

    async def stop(self) -> None:
        """Stop claiming, let sends finish (up to `stop_timeout`), store every result."""
        timeout = self._config.stop_timeout
        self._stopping.set()
        self._room.set()
        self._job_done.set()
        # Claim loops are never cancelled mid-claim (claimed rows would be stranded until
        # their lease ran out); they notice `_stopping` between steps.
        await _finish(self._loops, timeout)
        await _finish(set(self._sends).union(*self._jobs.values()), timeout)
        self._closing = True
        self._results_ready.set()
        if self._flusher is not None:
            await _finish([self._flusher], timeout)
        else:
            await self._flush()
        await self._pool.close()
        await self._callbacks.close()

    # -- steps (the loops below repeat them; tests drive them one at a time) ---------------

    async def run_jobs(self) -> int:
        """Claim every due job and run it to the end; how many ran."""
        ran = 0
        while jobs := await self._claim_jobs(sum(self._job_limits.values()), list(self._handlers)):
            await asyncio.gather(*(self._run_job(job) for job in jobs))
            ran += len(jobs)
        return ran

    async def dispatch_once(self) -> int:
        """Claim one batch, send it, store the results; how many deliveries it held."""
        claimed = await self._claim_and_send(self._config.batch_size)
        await asyncio.gather(*list(self._sends))
        await self._flush()
        return claimed

    async def sweep_once(self) -> queue.Swept:
        """The leader's chores, once: expired leases, overdue deliveries, failover timers that
        ran out, finished notifications."""
        now = self._clock()
        swept = await self._database.transaction(
            functools.partial(queue.sweep_expired_leases, now=now)
        )
        while await self._database.transaction(functools.partial(queue.expire_overdue, now=now)):
            pass
        fired = await failover.fire_due(self._database, now=now)
        await self._database.transaction(functools.partial(queue.complete_notifications, now=now))
        if swept.deliveries or swept.jobs or fired:
            self._signal.notify()
        return swept

    # -- jobs ------------------------------------------------------------------------------

    async def _job_loop(self) -> None:
        wake = self._signal.subscribe()
        delay = self._config.poll_min
        while not self._stopping.is_set():
            room = {
                kind: limit - len(self._jobs[kind])
                for kind, limit in self._job_limits.items()
                if limit > len(self._jobs[kind])
            }
            self._job_done.clear()
            if not room:
                await self._job_done.wait()
                continue
            wake.clear()
            claimed = 0
            for kind, free in room.items():
                for job in await self._guarded(self._claim_jobs(free, [kind]), []):
                    task = asyncio.create_task(self._run_job(job))
                    self._jobs[kind].add(task)
                    task.add_done_callback(self._jobs[kind].discard)
                    task.add_done_callback(lambda _task: self._job_done.set())
                    claimed += 1
            if claimed:
                delay = self._config.poll_min
                continue
            # A finished job frees room for a kind that may have more waiting: look again.
            await self._idle(wake, delay, also=self._job_done)
            delay = min(delay * 2, self._config.poll_max)

    async def _claim_jobs(self, limit: int, kinds: list[str]) -> list[ClaimedJob]:
        return await self._database.transaction(
            functools.partial(
                queue.claim_jobs,
                owner=self.name,
                now=self._clock(),
                lease=self._config.lease,
                limit=limit,
                kinds=kinds,
            )
        )

    async def _run_job(self, job: ClaimedJob) -> None:
        try:
            await self._handlers[job.kind](job)
        except Exception:
            # The job keeps its lease; the sweeper hands it to the next worker.
            log.exception("job %s (%s) failed", job.id, job.kind)

    async def _fanout(self, job: ClaimedJob) -> None:
        await fanout.run(
            self._database,
            job,
            owner=self.name,
            clock=self._clock,
            lease=self._config.lease,
            chunk_size=self._config.fanout_chunk,
            progressed=self._signal.notify,
            stopping=self._stopping.is_set,
        )

    # -- deliveries ------------------------------------------------------------------------

    async def _delivery_loop(self) -> None:
        wake = self._signal.subscribe()
        delay = self._config.poll_min
        # Claim in worthwhile batches: wait for this much room unless nothing is out at all.
        floor = max(1, min(self._config.batch_size, self._config.max_in_flight // 2))
        while not self._stopping.is_set():
            if self._in_flight and self._free() < floor:
                self._room.clear()
                await self._room.wait()
                continue
            wake.clear()
            limit = min(self._config.batch_size, self._free())
            if await self._guarded(self._claim_and_send(limit), 0):
                delay = self._config.poll_min
                continue
            await self._idle(wake, delay)
            delay = min(delay * 2, self._config.poll_max)

    def _free(self) -> int:
        return self._config.max_in_flight - self._in_flight

    async def _claim_and_send(self, limit: int) -> int:
        batch = await self._database.transaction(
            functools.partial(
                queue.claim_deliveries,
                owner=self.name,
                now=self._clock(),
                lease=self._config.lease,
                limit=limit,
            ),
            durable=False,
        )
        self._in_flight += len(batch.deliveries)
        for item in batch.deliveries:
            self._out[item.notification_id] += 1
            task = asyncio.create_task(self._send(item, batch.notifications[item.notification_id]))
            self._sends[task] = item.id
            task.add_done_callback(self._sends.pop)
        return len(batch.deliveries)

    async def _send(self, item: ClaimedDelivery, work: NotificationWork) -> None:
        handed_over = False

        def sending() -> None:
            nonlocal handed_over
            handed_over = True

        try:
            completion = await self._dispatcher.dispatch(item, work, sending=sending)
        except asyncio.CancelledError:
            (self._interrupted if handed_over else self._unsent).append(item)
            self._results_ready.set()
            raise
        self._results.append(completion)
        self._results_ready.set()

    async def _flush_loop(self) -> None:
        while not (self._closing and not (self._results or self._interrupted or self._unsent)):
            await self._results_ready.wait()
            self._results_ready.clear()
            if len(self._results) < self._config.flush_size and self._sends and not self._closing:
                await asyncio.sleep(self._config.flush_wait)
            await self._flush()

    async def _flush(self) -> None:
        """Store every finished send in one transaction, then give their room back."""
        results, self._results = self._results, []
        interrupted, self._interrupted = self._interrupted, []
        unsent, self._unsent = self._unsent, []
        try:
            if results:
                owned = await self._database.transaction(
                    functools.partial(
                        queue.complete_deliveries,
                        owner=self.name,
                        now=self._clock(),
                        completions=results,
                    ),
                    durable=False,
                )
                lost = len(results) - len(owned)
                if lost:
                    log.warning("%s results dropped: their leases had run out", lost)
                # A failover chain whose group has now failed moved on in that transaction, and
                # its next group's deliveries are due at once: claim them now, not at the next
                # poll (up to `poll_max` away once the claim loops have gone idle).
                if any(c.status in store_failover.ENDED for c in results if c.delivery_id in owned):
                    self._signal.notify()
            stored = collections.Counter(c.notification_id for c in results)
            settled = {nid for nid, count in stored.items() if self._out[nid] <= count}
            if settled:
                await self._database.transaction(
                    functools.partial(queue.complete_notifications, now=self._clock(), ids=settled),
                    durable=False,
                )
            for items, maybe_sent in ((interrupted, True), (unsent, False)):
                if items:
                    await self._database.transaction(
                        functools.partial(
                            queue.release_deliveries,
                            owner=self.name,
                            now=self._clock(),
                            ids=[item.id for item in items],
                            maybe_sent=maybe_sent,
                        ),
                        durable=False,
                    )
        except Exception:
            log.exception("storing %s results failed; trying again", len(results))
            self._results[:0] = results
            self._interrupted[:0] = interrupted
            self._unsent[:0] = unsent
            await asyncio.sleep(self._config.poll_max)
            self._results_ready.set()
            return
        self._in_flight -= len(results) + len(interrupted) + len(unsent)
        self._out.subtract(stored)
        self._out.subtract(item.notification_id for item in (*interrupted, *unsent))
        self._out = +self._out  # drops the notifications with nothing left out here
        self._room.set()

    # -- leader ----------------------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        while not self._stopping.is_set():
            if await self._guarded(self._leader.acquire(), False):
                await self._guarded(self.sweep_once(), None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._config.sweep_interval)

    # -- helpers ---------------------------------------------------------------------------

    async def _idle(
        self, wake: asyncio.Event, seconds: float, *, also: asyncio.Event | None = None
    ) -> None:
        """Until work may have arrived (or `also` is set), `seconds` passed, or the worker
        stops."""
        events = (wake, self._stopping) if also is None else (wake, self._stopping, also)
        waits = {asyncio.ensure_future(event.wait()) for event in events}
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()

    async def _guarded(self, step: Awaitable[T], fallback: T) -> T:
        """A loop step that fails (database unreachable) is logged and retried after a pause."""
        try:
            return await step
        except Exception:
            log.exception("worker step failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._config.poll_max)
            return fallback


async def _finish(tasks: Collection[asyncio.Task[None]], seconds: float) -> None:
    """Wait for `tasks` up to `seconds`, then cancel what is left."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=seconds)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
