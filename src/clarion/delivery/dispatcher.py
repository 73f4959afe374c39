"""One claimed delivery, start to finish: payload, channel, send, and what the answer means.

Every way a delivery can end is decided here, from the channel's four-word vocabulary
(clarion.channels.base.Outcome), and handed to the store as a `Completion`:

| What happened                          | Delivery becomes                      | Event        |
|----------------------------------------|---------------------------------------|--------------|
| TTL passed before the send             | expired (never sent)                  | expired      |
| no credential for the channel          | failed, 52002 (SMS: 52182)            | failed       |
| content has nothing this channel sends | failed, the payload's Notify code     | failed       |
| the credential's circuit breaker open  | pending until the next probe, attempt | held         |
|                                        | given back (clarion.delivery.breaker) |              |
| its rate-limit slot is later than soon | pending until the slot, which it      | throttled    |
|                                        | keeps; attempt given back             |              |
| its rate-limit slot is past the TTL    | expired (never sent)                  | expired      |
| ACCEPTED                               | sent, with the provider's id          | sent         |
| RETRY                                  | pending at the backoff time           | retry        |
| RETRY, no attempt left before the TTL  | expired                               | expired      |
| RETRY, attempts exhausted              | failed                                | failed       |
| DEAD_ADDRESS                           | failed, binding retired               | dead_address |
| FAILED                                 | failed                                | failed       |
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from clarion import errors
from clarion.channels.base import Message, Outcome, Result
from clarion.delivery import payloads, retry
from clarion.delivery.breaker import CircuitBreaker
from clarion.delivery.channel_pool import ChannelPool, ChannelUnavailableError, Fallback
from clarion.delivery.throttle import SendSlots
from clarion.store.queue import ClaimedDelivery, Completion, NotificationWork

log = logging.getLogger(__name__)

# Notify's code when a binding's channel has no credential, on the service or the binding
# (reference/twilio-notify.md §4.4, §7); SMS names the missing Messaging Service instead.
NO_CREDENTIAL = {"sms": "52182"}
NO_CREDENTIAL_DEFAULT = str(errors.INVALID_CREDENTIAL_SID)
INTERNAL_ERROR = "52000"
# Payloads kept built, per (notification, channel); a batch rarely spans more than a few.
PAYLOAD_CACHE_SIZE = 256
# A rate-limit slot at most this far off is waited for in the send; a later one goes back to
# the queue (its lease, and its room among the sends in flight, are not held that long).
SLOT_WAIT = timedelta(seconds=0.25)


class Dispatcher:
    def __init__(
        self,
        pool: ChannelPool,
        *,
        slots: SendSlots,
        receipt: Callable[[int], str],
        clock: Callable[[], datetime],
        rng: random.Random | None = None,
        fallback: Fallback = lambda _channel: None,
    ) -> None:
        self._pool = pool
        self._slots = slots
        # A delivery id's receipt token (clarion.delivery.receipts), for the push payloads.
        self._receipt = receipt
        self._fallback = fallback
        # One per credential id (or, for fallback channels, per binding type).
        self._breakers: dict[int | str, CircuitBreaker] = {}
        self._clock = clock
        self._rng = rng
        self._payloads: dict[tuple[int, str], dict[str, Any] | payloads.PayloadError] = {}

    async def dispatch(
        self,
        item: ClaimedDelivery,
        work: NotificationWork,
        *,
        sending: Callable[[], None] = lambda: None,
    ) -> Completion:
        """Send `item` (unless it cannot or must not be sent) and say how it ended.

        `sending()` is called just before the request goes to the provider: interrupted after
        that, the delivery may have been sent; before it, certainly not.
        """
        try:
            return await self._dispatch(item, work, sending)
        except Exception:
            # A bug, not a provider's answer: fail this delivery rather than retry it forever.
            log.exception("dispatching delivery %s failed", item.id)
            return _final(item, "failed", error_code=INTERNAL_ERROR, error_message="internal error")

    async def _dispatch(
        self, item: ClaimedDelivery, work: NotificationWork, sending: Callable[[], None]
    ) -> Completion:
        if _past_ttl(item, work, self._clock()):
            return _final(item, "expired", error_message="TTL passed before sending")
        payload = self._payload(work, item.channel)
        if isinstance(payload, payloads.PayloadError):
            return _final(
                item, "failed", error_code=str(payload.code), error_message=payload.message
            )
        channel = self._fallback(item.channel) if item.credential_id is None else None
        if channel is None:
            if item.credential_id is None:
                return _final(
                    item,
                    "failed",
                    error_code=NO_CREDENTIAL.get(item.channel, NO_CREDENTIAL_DEFAULT),
                    error_message=f"No {item.channel} credential on the service or the binding",
                )
            try:
                channel = await self._pool.get(item.credential_id)
            except ChannelUnavailableError as exc:
                return _final(item, "failed", error_code=exc.code, error_message=exc.message)
        key = item.credential_id or item.channel
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = self._breakers[key] = CircuitBreaker(clock=self._seconds)
        hold = breaker.hold_for()
        if hold is not None:
            return _final(
                item,
                "pending",
                event="held",
                error_message="the provider has been failing: waiting before trying it again",
                next_attempt_at=self._clock() + timedelta(seconds=hold),
                refund_attempt=True,
            )
        if item.credential_id is not None and not item.slot_reserved:
            unsent = await self._wait_for_slot(item, work, item.credential_id)
            if unsent is not None:
                return unsent
        if item.channel in payloads.RECEIPT_CHANNELS:
            payload = payloads.with_receipt(item.channel, payload, self._receipt(item.id))
        message = Message(
            key=delivery_key(work.sid, item.id),
            address=item.address,
            payload=payload,
            priority=work.priority,
            expires_at=work.expires_at,
        )
        sending()
        try:
            result = await channel.send(message)
        except Exception as exc:
            # Adapters classify every provider answer; an exception is a bug, and the request
            # may or may not have left, so it is retried like a lost connection.
            log.exception("channel %s raised instead of answering", type(channel).__name__)
            result = Result(outcome=Outcome.RETRY, error_message=f"internal error: {exc!r}")
        breaker.record(result.outcome)
        return self._completion(item, work, result)

    async def _wait_for_slot(
        self, item: ClaimedDelivery, work: NotificationWork, credential_id: int
    ) -> Completion | None:
        """Under the credential's RateLimit, wait for this send's slot when it is near; else the
        completion that holds the delivery until its slot, or expires it. None: send now."""
        per_second = self._pool.rate_limit(credential_id)
        if per_second is None:
            return None
        now = self._clock()
        slot = await self._slots.take(credential_id, per_second=per_second, now=now)
        # TTL 0 means now or never: no waiting for a later slot either.
        if _past_ttl(item, work, slot) or (work.ttl == 0 and slot - now > SLOT_WAIT):
            return _final(
                item,
                "expired",
                error_message=f"The credential's RateLimit ({per_second:g}/s) has no send"
                " slot left before the TTL",
            )
        if slot - now > SLOT_WAIT:
            return _final(
                item,
                "pending",
                event="throttled",
                error_message=f"waiting for a send slot (RateLimit {per_second:g}/s)",
                next_attempt_at=slot,
                refund_attempt=True,
                slot_reserved=True,
            )
        await asyncio.sleep((slot - now).total_seconds())
        return None

    def _seconds(self) -> float:
        """The dispatcher's clock as seconds, for the breakers (tests move both at once)."""
        return self._clock().timestamp()

    def _payload(
        self, work: NotificationWork, channel: str
    ) -> dict[str, Any] | payloads.PayloadError:
        key = (work.id, channel)
        cached = self._payloads.get(key)
        if cached is None:
            try:
                cached = payloads.build(channel, work.content)
            except payloads.PayloadError as exc:
                cached = exc
            if len(self._payloads) >= PAYLOAD_CACHE_SIZE:
                self._payloads.clear()
            self._payloads[key] = cached
        return cached

    def _completion(
        self, item: ClaimedDelivery, work: NotificationWork, result: Result
    ) -> Completion:
        match result.outcome:
            case Outcome.ACCEPTED:
                return _final(item, "sent", result=result)
            case Outcome.DEAD_ADDRESS:
                return _final(
                    item,
                    "failed",
                    event="dead_address",
                    result=result,
                    retire_binding_id=item.binding_id,
                )
            case Outcome.FAILED:
                return _final(item, "failed", result=result)
        at = retry.next_attempt_at(
            attempts=item.attempts,
            now=self._clock(),
            expires_at=work.expires_at,
            retry_after=result.retry_after,
            rng=self._rng,
        )
        if at is not None:
            return _final(item, "pending", event="retry", result=result, next_attempt_at=at)
        if item.attempts >= retry.MAX_ATTEMPTS:
            return _final(item, "failed", result=result)
        return _final(item, "expired", result=result)


def delivery_key(notification_sid: str, delivery_id: int) -> str:
    """The delivery's key: unique, the same on every retry, shaped as the UUID APNs wants for
    `apns-id` (8-4-4-4-12 hex). Half is the notification SID's random hex, half the row id;
    string slicing, because this runs once per send."""
    digits = notification_sid[2:18] + f"{delivery_id:016x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:32]}"


def _past_ttl(item: ClaimedDelivery, work: NotificationWork, now: datetime) -> bool:
    """TTL 0 means "try once, now" (Notify's Ttl): its first attempt goes whenever it comes."""
    if work.ttl == 0 and item.attempts == 1:
        return False
    return work.expires_at <= now


def _final(
    item: ClaimedDelivery,
    status: str,
    *,
    event: str | None = None,
    result: Result | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
    next_attempt_at: datetime | None = None,
    retire_binding_id: int | None = None,
    refund_attempt: bool = False,
    slot_reserved: bool = False,
) -> Completion:
    """The completion of `item`; the provider's `result`, when there is one, says the rest."""
    detail: dict[str, Any] = {"attempt": item.attempts}
    if item.ambiguous:
        # An earlier attempt's fate is unknown: this one may be a duplicate.
        detail["ambiguous"] = True
    if result is not None:
        error_code, error_message = result.error_code, result.error_message
    return Completion(
        delivery_id=item.id,
        notification_id=item.notification_id,
        status=status,
        event=event or status,
        next_attempt_at=next_attempt_at,
        provider_ref=result.provider_ref if result is not None else None,
        error_code=error_code,
        error_message=error_message,
        detail=detail,
        retire_binding_id=retire_binding_id,
        refund_attempt=refund_attempt,
        slot_reserved=slot_reserved,
    )
