"""Every transition of the circuit breaker, driven by an injected clock (nothing sleeps)."""

from __future__ import annotations

import pytest

from scripts.client.breaker import BreakerStats, CircuitBreaker, CircuitOpen, State


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def opened(clock: Clock, threshold: int = 3, cool_down: float = 10.0) -> CircuitBreaker:
    breaker = CircuitBreaker(failure_threshold=threshold, cool_down_seconds=cool_down, clock=clock)
    for _ in range(threshold):
        breaker.before_call()
        breaker.record_failure()
    assert breaker.state is State.OPEN
    return breaker


def in_trial(clock: Clock) -> CircuitBreaker:
    """An opened breaker a whole cool-down later, whose one trial call went through (not yet reported)."""
    breaker = opened(clock)
    clock.now += 10
    breaker.before_call()
    return breaker


def test_closed_stays_closed_below_the_threshold_and_a_success_resets_the_count() -> None:
    breaker = CircuitBreaker(failure_threshold=3, cool_down_seconds=10, clock=Clock())
    for _ in range(2):
        breaker.before_call()
        breaker.record_failure()
    assert breaker.stats() == BreakerStats(State.CLOSED, 2, 0, 0, 2, 0)
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is State.CLOSED  # 2 consecutive again, not 4
    assert breaker.stats().consecutive_failures == 2


def test_closed_opens_after_n_consecutive_failures_and_rejects_without_calling() -> None:
    clock = Clock()
    breaker = opened(clock, threshold=3)
    clock.now += 4
    with pytest.raises(CircuitOpen) as caught:
        breaker.before_call()
    assert caught.value.retry_in == pytest.approx(6.0)
    assert "3 consecutive failures" in str(caught.value)
    assert breaker.stats() == BreakerStats(State.OPEN, 3, 1, 1, 3, 0)


def test_open_turns_half_open_after_the_cool_down_and_lets_exactly_one_trial_through() -> None:
    clock = Clock()
    breaker = opened(clock)
    clock.now += 9.99
    assert breaker.state is State.OPEN
    clock.now += 0.01
    assert breaker.state is State.HALF_OPEN
    breaker.before_call()  # the trial
    with pytest.raises(CircuitOpen, match="trial call is in flight"):
        breaker.before_call()  # a second caller while the trial runs
    assert breaker.stats().rejected == 1


def test_a_successful_trial_closes_the_circuit() -> None:
    breaker = in_trial(Clock())
    breaker.record_success()
    assert breaker.stats() == BreakerStats(State.CLOSED, 0, 1, 0, 3, 1)
    breaker.before_call()  # closed: calls go through again


def test_a_failed_trial_opens_the_circuit_again_for_a_whole_cool_down() -> None:
    clock = Clock()
    breaker = in_trial(clock)
    breaker.record_failure()
    stats = breaker.stats()
    assert (stats.state, stats.opens) == (State.OPEN, 2)
    clock.now += 9
    with pytest.raises(CircuitOpen):
        breaker.before_call()
    clock.now += 1
    breaker.before_call()  # the next trial


def test_a_trial_that_never_reports_does_not_wedge_the_breaker() -> None:
    clock = Clock()
    breaker = in_trial(clock)  # a trial whose caller died before recording anything
    clock.now += 10
    breaker.before_call()  # after another cool-down, a new trial is allowed


def test_a_success_from_before_the_circuit_opened_does_not_close_it() -> None:
    clock = Clock()
    breaker = opened(clock)
    breaker.record_success()  # a call sent while closed, answered after the circuit opened
    assert breaker.state is State.OPEN


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError, match="cool_down_seconds"):
        CircuitBreaker(cool_down_seconds=0)
