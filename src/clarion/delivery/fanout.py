"""Running a `fanout` job: the notification's audience becomes delivery rows, chunk by chunk.

The SQL is clarion.store.fanout; this is the loop around it. Each chunk commits on its own and
wakes the claim loops at once, so sending starts while a big audience is still being expanded.
A worker that stops hands the job back at its cursor; one that crashes leaves it to the
sweeper, and whoever claims it next resumes from the last committed chunk.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from clarion.store import fanout, queue
from clarion.store.database import Database
from clarion.store.queue import ClaimedJob

log = logging.getLogger(__name__)

# A failed fan-out (the database was unreachable, say) is tried again after 2, 4, 8 … seconds.
MAX_RETRY_DELAY = 300.0


async def run(
    database: Database,
    job: ClaimedJob,
    *,
    owner: str,
    clock: Callable[[], datetime],
    lease: timedelta,
    chunk_size: int = fanout.CHUNK_SIZE,
    progressed: Callable[[], None],
    stopping: Callable[[], bool],
) -> None:
    """Expand `job` to the end, or until `stopping()`; `progressed()` after every chunk."""
    try:
        while True:
            chunk = await database.transaction(
                functools.partial(
                    fanout.expand_chunk,
                    job_id=job.id,
                    owner=owner,
                    now=clock(),
                    lease=lease,
                    chunk_size=chunk_size,
                )
            )
            if chunk.inserted:
                progressed()
            if chunk.done:
                return
            if stopping():
                await database.transaction(
                    functools.partial(queue.release_job, job_id=job.id, owner=owner)
                )
                return
    except queue.LeaseLostError:
        log.warning("fan-out job %s was taken over by another worker", job.id)
    except Exception as exc:
        log.exception("fan-out job %s failed (attempt %s)", job.id, job.attempts)
        await _failed(database, job, owner=owner, now=clock(), error=repr(exc))


async def _failed(
    database: Database, job: ClaimedJob, *, owner: str, now: datetime, error: str
) -> None:
    if job.attempts >= job.max_attempts:
        await database.transaction(
            functools.partial(fanout.give_up, job_id=job.id, owner=owner, error=error)
        )
        return
    delay = min(MAX_RETRY_DELAY, 2.0**job.attempts)
    await database.transaction(
        functools.partial(
            queue.fail_job,
            job_id=job.id,
            owner=owner,
            error=error,
            retry_at=now + timedelta(seconds=delay),
        )
    )
