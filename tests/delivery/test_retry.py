"""The retry policy: jittered exponential backoff, bounded by attempts, Retry-After and expiry."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clarion.delivery.retry import (
    MAX_ATTEMPTS,
    MAX_DELAY,
    MIN_DELAY,
    RETRY_AFTER_SPREAD,
    backoff_ceiling,
    next_attempt_at,
)

NOW = datetime(2026, 5, 1, 12, 0, 0)
FAR = NOW + timedelta(weeks=4)


class Lowest(random.Random):
    """Every draw is the lowest the policy allows."""

    def uniform(self, a: float, b: float) -> float:
        return a


class Highest(random.Random):
    """Every draw is the highest the policy allows."""

    def uniform(self, a: float, b: float) -> float:
        return b


def wait(attempts: int, rng: random.Random, **kwargs: float | None) -> float:
    at = next_attempt_at(attempts=attempts, now=NOW, expires_at=FAR, rng=rng, **kwargs)
    assert at is not None
    return (at - NOW).total_seconds()


@pytest.mark.parametrize(
    ("attempts", "ceiling"),
    [(1, 2), (2, 4), (3, 8), (4, 16), (8, 256), (9, 512), (10, MAX_DELAY), (11, MAX_DELAY)],
)
def test_longest_wait_doubles_from_two_seconds_up_to_fifteen_minutes(
    attempts: int, ceiling: float
) -> None:
    assert wait(attempts, Highest()) == ceiling


def test_shortest_wait_is_never_zero() -> None:
    assert wait(1, Lowest()) == MIN_DELAY


@given(attempts=st.integers(1, MAX_ATTEMPTS - 1), seed=st.integers())
def test_jittered_wait_stays_within_its_bounds(attempts: int, seed: int) -> None:
    assert MIN_DELAY <= wait(attempts, random.Random(seed)) <= backoff_ceiling(attempts)


def test_jitter_spreads_deliveries_that_failed_together() -> None:
    rng = random.Random(7)
    assert len({wait(5, rng) for _ in range(20)}) == 20


def test_the_same_seed_gives_the_same_schedule() -> None:
    assert wait(4, random.Random(42)) == wait(4, random.Random(42))


def test_retry_after_is_a_floor() -> None:
    assert wait(1, Lowest(), retry_after=60) == 60


def test_retry_after_spreads_throttled_deliveries_a_little_beyond_it() -> None:
    assert wait(1, Highest(), retry_after=60) == 60 * (1 + RETRY_AFTER_SPREAD)


def test_short_retry_after_does_not_shorten_the_backoff() -> None:
    assert wait(8, Highest(), retry_after=1) == 256


def test_retry_after_may_exceed_the_backoff_cap() -> None:
    assert wait(1, Lowest(), retry_after=3600) == 3600


def test_zero_or_negative_retry_after_is_ignored() -> None:
    assert wait(1, Lowest(), retry_after=0) == wait(1, Lowest(), retry_after=-5) == MIN_DELAY


def test_retry_past_expiry_is_none_the_delivery_expires() -> None:
    expires_at = NOW + timedelta(seconds=10)
    assert next_attempt_at(attempts=8, now=NOW, expires_at=expires_at, rng=Lowest()) is not None
    assert next_attempt_at(attempts=8, now=NOW, expires_at=expires_at, rng=Highest()) is None


def test_retry_landing_exactly_at_expiry_is_none() -> None:
    expires_at = NOW + timedelta(seconds=2)
    assert next_attempt_at(attempts=1, now=NOW, expires_at=expires_at, rng=Highest()) is None


def test_retry_after_beyond_expiry_is_none() -> None:
    expires_at = NOW + timedelta(minutes=5)
    assert (
        next_attempt_at(attempts=1, now=NOW, expires_at=expires_at, retry_after=600, rng=Lowest())
        is None
    )


def test_already_expired_delivery_is_not_retried() -> None:
    assert next_attempt_at(attempts=1, now=NOW, expires_at=NOW, rng=Lowest()) is None


def test_last_allowed_attempt_still_gets_a_retry() -> None:
    assert next_attempt_at(attempts=MAX_ATTEMPTS - 1, now=NOW, expires_at=FAR) is not None


def test_retries_stop_after_the_maximum_number_of_attempts() -> None:
    assert next_attempt_at(attempts=MAX_ATTEMPTS, now=NOW, expires_at=FAR) is None


def test_attempts_count_the_first_send_so_zero_is_a_mistake() -> None:
    with pytest.raises(ValueError, match="attempts"):
        next_attempt_at(attempts=0, now=NOW, expires_at=FAR)


def test_ceiling_stays_capped_for_any_attempt_count() -> None:
    assert backoff_ceiling(10_000) == MAX_DELAY


def test_schedule_is_naive_utc_like_the_store() -> None:
    at = next_attempt_at(attempts=1, now=NOW, expires_at=FAR)
    assert at is not None
    assert at.tzinfo is None
