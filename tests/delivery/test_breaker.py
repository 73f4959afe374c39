"""The circuit breaker: when it holds a credential's deliveries back, and when it lets go."""

from __future__ import annotations

from clarion.channels.base import Outcome
from clarion.delivery.breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker(threshold=3, cooldown=10.0, max_cooldown=40.0, clock=clock)


def test_a_closed_breaker_lets_everything_through() -> None:
    subject = breaker(Clock())
    for _ in range(2):
        subject.record(Outcome.RETRY)
    assert subject.hold_for() is None
    assert not subject.is_open


def test_threshold_consecutive_retries_open_it_for_the_cooldown() -> None:
    clock = Clock()
    subject = breaker(clock)
    for _ in range(3):
        subject.record(Outcome.RETRY)

    assert subject.is_open
    assert subject.hold_for() == 10.0
    clock.now += 4
    assert subject.hold_for() == 6.0


def test_any_other_answer_resets_the_count() -> None:
    """One throttled device among healthy ones never trips the breaker."""
    subject = breaker(Clock())
    for outcome in [Outcome.RETRY, Outcome.RETRY, Outcome.ACCEPTED] * 5:
        subject.record(outcome)
    for outcome in [Outcome.RETRY, Outcome.RETRY, Outcome.DEAD_ADDRESS, Outcome.RETRY]:
        subject.record(outcome)

    assert not subject.is_open


def test_after_the_cooldown_one_probe_goes_and_the_rest_wait() -> None:
    clock = Clock()
    subject = breaker(clock)
    for _ in range(3):
        subject.record(Outcome.RETRY)
    clock.now += 10

    assert subject.hold_for() is None  # the probe
    assert subject.hold_for() is not None
    assert subject.hold_for() is not None


def test_a_successful_probe_closes_it() -> None:
    clock = Clock()
    subject = breaker(clock)
    for _ in range(3):
        subject.record(Outcome.RETRY)
    clock.now += 10
    assert subject.hold_for() is None

    subject.record(Outcome.ACCEPTED)

    assert not subject.is_open
    assert subject.hold_for() is None
    assert subject.hold_for() is None


def test_each_failed_probe_doubles_the_wait_up_to_the_maximum() -> None:
    clock = Clock()
    subject = breaker(clock)
    for _ in range(3):
        subject.record(Outcome.RETRY)
    waits = []
    for _ in range(4):
        clock.now += 1000
        assert subject.hold_for() is None
        subject.record(Outcome.RETRY)
        hold = subject.hold_for()
        assert hold is not None
        waits.append(hold)

    assert waits == [20.0, 40.0, 40.0, 40.0]


def test_after_closing_the_cooldown_starts_over() -> None:
    clock = Clock()
    subject = breaker(clock)
    for _ in range(3):
        subject.record(Outcome.RETRY)
    clock.now += 10
    subject.hold_for()
    subject.record(Outcome.RETRY)  # failed probe: 20 s
    clock.now += 20
    subject.hold_for()
    subject.record(Outcome.ACCEPTED)

    for _ in range(3):
        subject.record(Outcome.RETRY)

    assert subject.hold_for() == 10.0
