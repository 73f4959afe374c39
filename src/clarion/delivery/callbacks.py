"""Running a `delivery_callback` job: tell the application what became of every delivery of a
finished notification, the way Twilio Notify does (reference/twilio-notify.md §6).

The job is queued in the transaction that completes the notification (clarion.store.callbacks),
so no finished notification misses its callback. It POSTs the deliveries in batches,
form-encoded, one request per batch of up to 994 deliveries (Notify's "up to 1000", kept to 1000
form fields in all: clarion.store.callbacks.BATCH_SIZE says why):

- `NotificationSid`, `AccountSid`, `ServiceSid`;
- `Count`: deliveries in this batch; `SequenceId`: the batch number from 0; `IsFinal`: `true` on
  the last batch, else `false` (a notification without deliveries gets one empty final batch);
- `DeliveryState`: one form field per delivery, repeated `Count` times, each a JSON object
  `{"sid", "address", "type", "status", "error_code", "error_message", "binding_sid",
  "identity"}`: `sid` is the provider's message id (`SM…` for SMS), else the delivery's `DL…`
  SID; `type` the binding type; `status` `SENT` (handed to the provider; also when it has since
  reported the message delivered), `FAILED` or `EXPIRED` (never sent within the TTL). Twilio
  left this encoding undocumented; this is Clarion's. A delivery of a failover chain also has
  `delivery_sid` (its `DL…` SID), `failover_of`, `failover_step` and `failover_reason`, as the
  Deliveries API shows them; other deliveries have exactly the keys above.

Each request carries `X-Twilio-Signature`, computed with the account's auth token as Twilio
signs its webhooks (providers.md §3.4), so `RequestValidator` accepts it. A 2xx answer
acknowledges the batch and moves the job's cursor past it; a crash resends only what was not
acknowledged. Anything else (another status, a timeout, no connection) ends the run, to be tried
again with the delivery retry policy's backoff, until the batch has had `max_attempts` tries and
the callback fails with the reason, which the notification's API record shows. A URL whose
host the destination policy refuses (clarion.destinations: a private address) fails the
callback at once, with the policy's reason.

Each POST's answer — status or connection error, latency, the first `EXCERPT_BYTES` of the body
as text — is recorded with the batch's progress (clarion.store.callbacks.record_attempt), for
the portal's debugger.

States are as they stand when a batch is built; later changes (an SMS reported delivered) are not
sent again, as Notify sends no handset receipts: the Deliveries API has them.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import aiohttp
from sqlalchemy import Connection

from clarion import sids
from clarion.channels.http1 import PooledSession
from clarion.channels.twilio_sms import signature
from clarion.delivery import retry
from clarion.destinations import PERMISSIVE, DestinationNotAllowedError, DestinationPolicy
from clarion.store import callbacks, queue
from clarion.store.callbacks import Attempt, Batch, Cursor, Reported, Sender
from clarion.store.database import Database
from clarion.store.queue import ClaimedJob
from clarion.vault import Vault

log = logging.getLogger(__name__)

TIMEOUT = 10.0
# Jobs run few at a time, each posting one batch after another.
CONNECTIONS_PER_HOST = 4
# A delivery's status → DeliveryState `status`. Notify's vocabulary is SENT/FAILED (§6); a
# delivered SMS was SENT as far as the callback goes, and EXPIRED is Clarion's own.
STATES = {"sent": "SENT", "delivered": "SENT", "failed": "FAILED", "expired": "EXPIRED"}
# How much of a receiver's answer the debugger keeps: enough for an error page's message.
EXCERPT_BYTES = 1024


@dataclass(frozen=True, kw_only=True)
class Answer:
    """What one POST got: a status (and the start of the body), or why there was none."""

    status: int | None
    reason: str | None
    error: str | None
    latency_ms: int
    excerpt: str | None
    # The destination policy refused the URL's host: retrying will not change that.
    refused: bool = False

    def failure(self) -> str | None:
        """Why the batch is not acknowledged (the job's last error), or None."""
        if self.status is None:
            return self.error
        if callbacks.acknowledges(self.status):
            return None
        return f"HTTP {self.status} {self.reason or ''}".rstrip()


class DeliveryCallbacks:
    """The `delivery_callback` job handler of one worker, with its HTTP session."""

    def __init__(
        self,
        database: Database,
        *,
        vault: Vault,
        owner: str,
        clock: Callable[[], datetime],
        lease: timedelta,
        stopping: Callable[[], bool],
        timeout: float = TIMEOUT,
        rng: random.Random | None = None,
        destinations: DestinationPolicy = PERMISSIVE,
    ) -> None:
        self._database = database
        self._vault = vault
        self._owner = owner
        self._clock = clock
        self._lease = lease
        self._stopping = stopping
        self._timeout = timeout
        self._rng = rng or random.Random()
        self._http = PooledSession(
            limit_per_host=CONNECTIONS_PER_HOST,
            timeout=aiohttp.ClientTimeout(total=timeout),
            destinations=destinations,
        )

    async def run(self, job: ClaimedJob) -> None:
        """Post the batches from the job's cursor on, until the last, a failure or a stop."""
        try:
            await self._run(job)
        except queue.LeaseLostError:
            log.warning("delivery callback job %s was taken over by another worker", job.id)
        except Exception as exc:
            log.exception("delivery callback job %s failed (attempt %s)", job.id, job.attempts)
            await self._failed(job, attempts=job.attempts, error=f"internal error: {exc!r}")

    async def close(self) -> None:
        await self._http.close()

    async def _run(self, job: ClaimedJob) -> None:
        if job.notification_id is None or job.cursor is None:
            raise ValueError("a delivery callback job names its notification and URL")
        notification_id = job.notification_id
        cursor = Cursor.of(job.cursor)
        who = await self._database.read(
            functools.partial(callbacks.sender, notification_id=notification_id)
        )
        auth_token = self._vault.open(who.auth_token_sealed)
        attempts = job.attempts
        while True:
            batch = await self._database.read(
                functools.partial(
                    callbacks.load_batch, notification_id=notification_id, after=cursor.after
                )
            )
            answer = await self._post(cursor.url, form(who, cursor.sequence, batch), auth_token)
            attempt = Attempt(
                sequence=cursor.sequence,
                final=batch.final,
                deliveries=len(batch.deliveries),
                attempt=attempts,
                at=self._clock(),
                status_code=answer.status,
                error=answer.error,
                latency_ms=answer.latency_ms,
                response_excerpt=answer.excerpt,
            )
            error = answer.failure()
            if error is not None:
                await self._failed(
                    job,
                    # A refused URL fails the callback at once, without retries.
                    attempts=job.max_attempts if answer.refused else attempts,
                    error=f"batch {cursor.sequence}: {error}",
                    attempt=attempt,
                )
                return
            after = batch.deliveries[-1].id if batch.deliveries else cursor.after
            cursor = Cursor(url=cursor.url, sequence=cursor.sequence + 1, after=after)
            recorded = await self._database.transaction(
                functools.partial(
                    _acknowledged,
                    notification_id=notification_id,
                    attempt=attempt,
                    job_id=job.id,
                    owner=self._owner,
                    cursor=cursor,
                    final=batch.final,
                    now=self._clock(),
                    lease=self._lease,
                )
            )
            if not recorded:
                raise queue.LeaseLostError(f"job {job.id}")
            if batch.final:
                return
            attempts = 1
            if self._stopping():
                await self._database.transaction(
                    functools.partial(queue.release_job, job_id=job.id, owner=self._owner)
                )
                return

    async def _post(self, url: str, fields: list[tuple[str, str]], auth_token: str) -> Answer:
        """Send one batch; what came back, acknowledged (2xx) or not."""
        params: dict[str, list[str]] = {}
        for name, value in fields:
            params.setdefault(name, []).append(value)
        headers = {"X-Twilio-Signature": signature(url, params, auth_token)}
        started = time.perf_counter()

        def failed(error: str) -> Answer:
            return Answer(
                status=None, reason=None, error=error, latency_ms=_ms(started), excerpt=None
            )

        try:
            # A redirect is not followed: the signature covers this URL, not another.
            async with self._http.client().post(
                url, data=fields, headers=headers, allow_redirects=False
            ) as response:
                excerpt = await _excerpt(response)
                return Answer(
                    status=response.status,
                    reason=response.reason,
                    error=None,
                    latency_ms=_ms(started),
                    excerpt=excerpt,
                )
        except TimeoutError:
            return failed(f"no answer within {self._timeout:g} s")
        except DestinationNotAllowedError as exc:
            return replace(failed(str(exc)), refused=True)
        except (aiohttp.ClientError, ValueError) as exc:
            return failed(f"could not reach the callback URL: {exc!r}")

    async def _failed(
        self, job: ClaimedJob, *, attempts: int, error: str, attempt: Attempt | None = None
    ) -> None:
        """Retry after the delivery policy's backoff, or give up once the batch had its tries;
        `attempt`, the POST that failed, is recorded with it."""
        retry_at = None
        if attempts < job.max_attempts:
            delay = self._rng.uniform(retry.MIN_DELAY, retry.backoff_ceiling(attempts))
            retry_at = self._clock() + timedelta(seconds=delay)
        else:
            # Notify's 52311, "Delivery callback invocation failed" (twilio-notify.md §7).
            log.warning("52311 delivery callback job %s failed for good: %s", job.id, error)
        try:
            await self._database.transaction(
                functools.partial(
                    _not_acknowledged,
                    notification_id=job.notification_id,
                    attempt=attempt,
                    job_id=job.id,
                    owner=self._owner,
                    error=error,
                    retry_at=retry_at,
                )
            )
        except queue.LeaseLostError:
            log.warning("delivery callback job %s was taken over by another worker", job.id)


def _acknowledged(
    conn: Connection,
    *,
    notification_id: int,
    attempt: Attempt,
    job_id: int,
    owner: str,
    cursor: Cursor,
    final: bool,
    now: datetime,
    lease: timedelta,
) -> bool:
    """Record the POST and move the job past its batch, in one transaction."""
    recorded = callbacks.record_batch(
        conn, job_id=job_id, owner=owner, cursor=cursor, final=final, now=now, lease=lease
    )
    if recorded:
        callbacks.record_attempt(conn, notification_id=notification_id, attempt=attempt)
    return recorded


def _not_acknowledged(
    conn: Connection,
    *,
    notification_id: int | None,
    attempt: Attempt | None,
    job_id: int,
    owner: str,
    error: str,
    retry_at: datetime | None,
) -> None:
    """Record the POST that failed (if there was one) and schedule the retry, together: a
    worker that lost the job records nothing."""
    queue.fail_job(conn, job_id=job_id, owner=owner, error=error, retry_at=retry_at)
    if attempt is not None and notification_id is not None:
        callbacks.record_attempt(conn, notification_id=notification_id, attempt=attempt)


def _ms(started: float) -> int:
    return round(1000 * (time.perf_counter() - started))


async def _excerpt(response: aiohttp.ClientResponse) -> str | None:
    """The start of a response body as printable text, or None for an empty body.

    Read up to `EXCERPT_BYTES` (and one more, to know whether there is more): a receiver's
    error page says what went wrong, its full size does not matter. A body that stalls or breaks
    off leaves what had arrived: the status has already answered the POST.
    """
    data = b""
    try:
        while len(data) <= EXCERPT_BYTES:
            chunk = await response.content.read(EXCERPT_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except (TimeoutError, aiohttp.ClientError):
        pass
    if not data:
        return None
    return sanitise(data[:EXCERPT_BYTES], charset=response.charset) + (
        "…" if len(data) > EXCERPT_BYTES else ""
    )


def sanitise(data: bytes, *, charset: str | None) -> str:
    """Bytes from a stranger as text safe to store and show: decoded leniently (a cut-off
    multi-byte character becomes U+FFFD), control and format characters but tab and newline
    replaced, so nothing can hide text or break a terminal or a log line."""
    try:
        text = data.decode(charset or "utf-8", errors="replace")
    except LookupError:
        text = data.decode("utf-8", errors="replace")
    return "".join(
        char
        if char in "\t\n" or unicodedata.category(char)[0] != "C"
        else ("" if char == "\r" else "\ufffd")
        for char in text
    )


def form(who: Sender, sequence: int, batch: Batch) -> list[tuple[str, str]]:
    """One batch's form fields, in the order they are sent."""
    return [
        ("NotificationSid", who.notification_sid),
        ("AccountSid", who.account_sid),
        ("ServiceSid", who.service_sid),
        ("Count", str(len(batch.deliveries))),
        ("SequenceId", str(sequence)),
        ("IsFinal", "true" if batch.final else "false"),
        *(
            ("DeliveryState", json.dumps(delivery_state(item), separators=(",", ":")))
            for item in batch.deliveries
        ),
    ]


def delivery_state(item: Reported) -> dict[str, Any]:
    delivery_sid = sids.row_sid(sids.DELIVERY, item.id)
    state: dict[str, Any] = {
        "sid": item.provider_ref or delivery_sid,
        "address": item.address,
        "type": item.channel,
        "status": STATES[item.status],
        "error_code": item.error_code,
        "error_message": item.error_message,
        "binding_sid": item.binding_sid,
        "identity": item.identity,
    }
    if item.failover_step is not None:
        # Extension keys, as the Deliveries API names them; `delivery_sid` is what another
        # delivery's `failover_of` refers to, since `sid` is the provider's id when there is one.
        previous = item.failover_of
        state |= {
            "delivery_sid": delivery_sid,
            "failover_of": None if previous is None else sids.row_sid(sids.DELIVERY, previous),
            "failover_step": item.failover_step,
            "failover_reason": item.failover_reason,
        }
    return state
