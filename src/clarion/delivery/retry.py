"""When a delivery that the provider asked us to retry gets its next attempt, if ever.

Exponential backoff with *full jitter*: the n-th retry waits a uniform random time up to
BASE_DELAY·2ⁿ⁻¹ (capped). AWS's "Exponential Backoff and Jitter" (2015) measured full jitter
doing the least total work for about the same completion time as decorrelated jitter, and
decorrelated jitter needs the previous delay while this only needs the attempt count the
delivery row already has. Jitter matters here because a provider hiccup fails thousands of
deliveries at once; without it they would all come back at once too (FCM: "exponential backoff
with per-message jitter", providers.md §2.3).

Datetimes are naive UTC, as the store keeps them (clarion.store.clock).
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

# First retry waits up to this long; FCM's guidance starts at 1 s, APNs gives none.
BASE_DELAY = 2.0
# No single wait is longer: a provider back after an outage should see its backlog within
# minutes, and TTLs (default four weeks) are not the limit that matters.
MAX_DELAY = 15 * 60.0
# Even an unlucky draw waits this long, so a provider that just failed isn't hit again at once.
MIN_DELAY = 1.0
# Attempts in all, the first send included. The tenth and eleventh waits reach MAX_DELAY, so
# retries ride out about 25 minutes of provider trouble on average (47 at most) before the
# delivery fails and failover, if asked for, moves on.
MAX_ATTEMPTS = 12
# A provider's Retry-After is a floor; deliveries throttled together are spread over up to this
# fraction beyond it instead of all returning in the same instant.
RETRY_AFTER_SPREAD = 0.2

_rng = random.Random()


def next_attempt_at(
    *,
    attempts: int,
    now: datetime,
    expires_at: datetime,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> datetime | None:
    """When to try again after `attempts` attempts have failed, or None to give up.

    None means the retries are exhausted or the next attempt would land at or past the
    delivery's expiry, where it could only expire.
    """
    if attempts < 1:
        raise ValueError(f"attempts counts the attempts made, at least 1 (got {attempts})")
    if attempts >= MAX_ATTEMPTS:
        return None
    draw = (rng or _rng).uniform
    delay = draw(MIN_DELAY, backoff_ceiling(attempts))
    if retry_after is not None and retry_after > 0:
        delay = max(delay, retry_after * draw(1.0, 1.0 + RETRY_AFTER_SPREAD))
    at = now + timedelta(seconds=delay)
    return at if at < expires_at else None


def backoff_ceiling(attempts: int) -> float:
    """The longest wait after `attempts` failed attempts: doubling from BASE_DELAY, capped."""
    # min() on the exponent first keeps 2**n small for absurd attempt counts.
    return min(MAX_DELAY, BASE_DELAY * 2.0 ** min(attempts - 1, 32))
