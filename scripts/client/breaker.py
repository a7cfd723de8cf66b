"""A circuit breaker for a long-lived client: stop sending to a server that keeps failing.

    breaker = CircuitBreaker(failure_threshold=5, cool_down_seconds=10)
    client = TorchServeClient(..., breaker=breaker)   # predict() raises CircuitOpen while open
    breaker.stats()                                    # state, consecutive failures, opens, rejected

closed --(N consecutive failures)--> open --(cool-down passed, next call)--> half-open
half-open: one trial call goes through, others are rejected; its success closes the
circuit, its failure opens it again for another cool-down.

Why: an overloaded server refuses fast, but a thousand clients each retrying keep it
overloaded. While open, a client fails at once, without a request, and the server gets
a cool-down's rest. What counts as a failure is the caller's call (TorchServeClient:
overload, connection errors, 5xx; a 4xx is the client's mistake and counts as success).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum


class State(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitOpen(RuntimeError):
    """The breaker refused the call without sending it: the server failed too often just now."""

    def __init__(self, state: State, failures: int, retry_in: float) -> None:
        what = "a trial call is in flight" if state is State.HALF_OPEN else f"{failures} consecutive failures"
        super().__init__(f"circuit open ({what}): not sent; the next trial call is allowed in "
                         f"{retry_in:.1f} s")
        self.retry_in = retry_in


@dataclass(frozen=True)
class BreakerStats:
    state: State
    consecutive_failures: int
    opens: int      # times the circuit opened (from closed or from a failed trial)
    rejected: int   # calls refused without being sent
    failures: int   # failed calls, all told
    successes: int


class CircuitBreaker:
    """Thread-safe; `clock` is injectable so tests drive the cool-down without sleeping."""

    def __init__(self, failure_threshold: int = 5, cool_down_seconds: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if failure_threshold < 1 or cool_down_seconds <= 0:
            raise ValueError("failure_threshold must be >= 1 and cool_down_seconds > 0, got "
                             f"{failure_threshold} and {cool_down_seconds}")
        self.failure_threshold = failure_threshold
        self.cool_down_seconds = cool_down_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._state = State.CLOSED
        self._opened_at = 0.0
        self._trial_started: float | None = None
        self._consecutive = self._opens = self._rejected = self._failures = self._successes = 0

    @property
    def state(self) -> State:
        """The state a call arriving now meets (open turns half-open once the cool-down passed)."""
        with self._lock:
            return self._current(self._clock())

    def before_call(self) -> None:
        """Let the call through, or raise CircuitOpen (and count it as rejected)."""
        with self._lock:
            now = self._clock()
            state = self._current(now)
            if state is State.CLOSED:
                return
            trial = self._trial_started
            if state is State.HALF_OPEN and (trial is None or now - trial >= self.cool_down_seconds):
                self._state, self._trial_started = State.HALF_OPEN, now  # this call is the trial
                return
            self._rejected += 1
            since = self._trial_started if state is State.HALF_OPEN else self._opened_at
            raise CircuitOpen(state, self._consecutive,
                              max(0.0, since + self.cool_down_seconds - now))

    def record_success(self) -> None:
        with self._lock:
            self._successes += 1
            self._consecutive = 0
            if self._state is not State.OPEN:  # a call sent before the circuit opened does not close it
                self._state, self._trial_started = State.CLOSED, None

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            self._consecutive += 1
            trial_failed = self._state is State.HALF_OPEN
            if trial_failed or (self._state is State.CLOSED and self._consecutive >= self.failure_threshold):
                self._state, self._opened_at, self._trial_started = State.OPEN, self._clock(), None
                self._opens += 1

    def stats(self) -> BreakerStats:
        with self._lock:
            return BreakerStats(self._current(self._clock()), self._consecutive, self._opens,
                                self._rejected, self._failures, self._successes)

    def _current(self, now: float) -> State:
        if self._state is State.OPEN and now - self._opened_at >= self.cool_down_seconds:
            return State.HALF_OPEN
        return self._state
