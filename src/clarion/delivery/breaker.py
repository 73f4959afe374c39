"""A circuit breaker per provider endpoint, so an outage does not burn the queue.

Without it, every queued delivery of a credential whose provider is down is sent, fails, and
uses up one of its attempts; a long outage would exhaust them all and hammer the provider as it
comes back. The breaker opens after `threshold` consecutive retryable answers on one credential
— consecutive across all its deliveries, so one throttled device among healthy ones never
trips it — and then holds that credential's deliveries back (without counting an attempt)
until a single probe succeeds. Each failed probe doubles the wait, up to `max_cooldown`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from clarion.channels.base import Outcome

THRESHOLD = 20
COOLDOWN = 5.0
MAX_COOLDOWN = 300.0


class CircuitBreaker:
    def __init__(
        self,
        *,
        threshold: int = THRESHOLD,
        cooldown: float = COOLDOWN,
        max_cooldown: float = MAX_COOLDOWN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = threshold
        self._base_cooldown = cooldown
        self._max_cooldown = max_cooldown
        self._clock = clock
        self._failures = 0
        self._cooldown = cooldown
        # While open: when the next probe may go, and whether one is out.
        self._open_until: float | None = None
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    def hold_for(self) -> float | None:
        """None: send now. Otherwise how many seconds to hold the delivery back.

        Once the cooldown has passed, exactly one caller gets None (the probe); the others
        keep waiting for its answer.
        """
        if self._open_until is None:
            return None
        remaining = self._open_until - self._clock()
        if remaining > 0:
            return remaining
        if self._probing:
            return self._cooldown
        self._probing = True
        return None

    def record(self, outcome: Outcome) -> None:
        """Count a provider's answer: any answer but RETRY shows the endpoint works."""
        if outcome is not Outcome.RETRY:
            self._failures = 0
            self._cooldown = self._base_cooldown
            self._open_until = None
            self._probing = False
            return
        self._failures += 1
        if self._probing:
            # The probe failed: stay open, wait longer.
            self._probing = False
            self._cooldown = min(self._cooldown * 2, self._max_cooldown)
            self._open_until = self._clock() + self._cooldown
        elif self._open_until is None and self._failures >= self._threshold:
            self._open_until = self._clock() + self._cooldown
