"""The one small interface every provider adapter implements.

A channel is built once per credential and sends one message at a time; the dispatcher runs
many sends concurrently and turns each `Result` into the delivery's next state. Adapters never
raise for a provider's answer: they classify it, so retry, token retirement and failover are
decided in one place (clarion.delivery) from one vocabulary.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from clarion.destinations import DestinationNotAllowedError


class Outcome(enum.Enum):
    # The provider took the message; `provider_ref` identifies it there.
    ACCEPTED = "accepted"
    # Try again later (throttled, provider unavailable, connection lost, timeout).
    RETRY = "retry"
    # The address will never work again (uninstalled app, unregistered token, blocked number):
    # the binding is retired and failover may move on at once.
    DEAD_ADDRESS = "dead_address"
    # This message can never be sent as it is (bad payload, bad credential, policy refusal).
    FAILED = "failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """What one delivery sends: the address and the payload already built for its channel."""

    # Stable per delivery across retries: used as the provider-side collapse / idempotency key.
    key: str
    address: str
    # Channel-specific JSON built by clarion.delivery.payloads (e.g. the APNs `aps` document,
    # the FCM v1 `message` object without `token`, the SMS body).
    payload: dict[str, Any]
    # "high" or "low", from the notification's Priority.
    priority: str = "high"
    # When the provider should stop trying; None means the provider's default.
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    outcome: Outcome
    provider_ref: str | None = None
    # For RETRY: the provider's requested delay in seconds (Retry-After), if it gave one.
    retry_after: float | None = None
    # The provider's own error code and text (APNs reason, FCM status, Twilio 21211, Graph 551).
    error_code: str | None = None
    error_message: str | None = None


def refused(error: DestinationNotAllowedError) -> Result:
    """The result of a send whose provider host the destination policy refused: FAILED, as
    trying again would reach the same address (clarion.destinations)."""
    return Result(outcome=Outcome.FAILED, error_code=error.code, error_message=str(error))


class Channel(Protocol):
    """A provider adapter bound to one credential."""

    async def send(self, message: Message) -> Result: ...

    async def close(self) -> None: ...
