"""Exponential backoff with full jitter, bounded by attempts and by total time.

    for pause in Backoff(attempts=5, total_seconds=10).pauses():
        ...                       # send; stop on success; else the loop sleeps `pause`

Full jitter (each pause drawn uniformly from 0 to base x 2^retry, capped) spreads the
re-sends of many refused clients over time instead of sending them back together;
see the AWS Architecture Blog, "Exponential Backoff And Jitter" (2015). Only for
requests that are safe to repeat: TorchServeClient uses it for overload refusals,
which never reached a worker.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Backoff:
    """`attempts` sends in all (the first included); no re-send starts later than
    `total_seconds` after the first. `sleep`, `clock` and `draw` (uniform in [0, 1))
    are injectable so tests run without waiting."""

    attempts: int = 5
    total_seconds: float = 10.0
    base_seconds: float = 0.1
    max_pause_seconds: float = 2.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    draw: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.total_seconds < 0 or min(self.base_seconds, self.max_pause_seconds) <= 0:
            raise ValueError(f"{self}: attempts must be >= 1, total_seconds >= 0, and base_seconds and "
                             "max_pause_seconds > 0")

    def pauses(self) -> Iterator[float]:
        """Yield before each re-send, after sleeping the pause it yields; the caller breaks on success.
        Call it when the first send starts (the total time counts from then); `attempts=1` yields nothing."""
        return self._pauses(deadline=self.clock() + self.total_seconds)

    def _pauses(self, deadline: float) -> Iterator[float]:
        for retry in range(1, self.attempts):
            ceiling = min(self.max_pause_seconds, self.base_seconds * 2 ** (retry - 1))
            remaining = deadline - self.clock()
            if remaining <= 0:
                return
            pause = min(self.draw() * ceiling, remaining)
            self.sleep(pause)
            yield pause


NO_RETRY = Backoff(attempts=1)
