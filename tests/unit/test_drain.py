"""The drain's idle rule, on a scripted sequence of server loads and a fake clock (no sleeping)."""

from __future__ import annotations

from scripts.client.prometheus import Sample
from scripts.operate.drain import Load, in_worker_requests, wait_idle


def scripted(loads: list[Load], step: float = 0.1):
    """A probe that returns `loads` in turn (the last one forever), and a clock that `sleep` advances."""
    now = [0.0]
    remaining = list(loads)

    def probe() -> Load:
        return remaining.pop(0) if len(remaining) > 1 else remaining[0]

    return probe, (lambda: now[0]), (lambda seconds: now.__setitem__(0, now[0] + seconds))


def test_idle_only_after_a_quiet_period_with_nothing_queued_in_a_worker_or_arriving() -> None:
    busy, idle = Load(3, 0, 10), Load(0, 0, 10)
    probe, clock, sleep = scripted([busy, Load(0, 2, 10), idle, Load(0, 0, 11)] + [Load(0, 0, 11)] * 30)
    done, last = wait_idle(probe, quiet=1.0, timeout=10, poll=0.1, clock=clock, sleep=sleep)
    assert done and last == Load(0, 0, 11)
    assert clock() >= 0.4 + 1.0  # the arrival at 0.3 s restarted the quiet period


def test_gives_up_at_the_timeout_and_says_what_is_left() -> None:
    probe, clock, sleep = scripted([Load(0, 4, 1)])
    done, last = wait_idle(probe, quiet=1.0, timeout=5, poll=0.1, clock=clock, sleep=sleep)
    assert not done and last.in_worker == 4 and 5 <= clock() < 5.2


def test_a_dead_workers_last_gauge_value_does_not_count() -> None:
    samples = [Sample("InFlightRequests", {"WorkerPid": "101"}, 8.0),
               Sample("InFlightRequests", {"WorkerPid": "202"}, 3.0),
               Sample("ts_inference_requests_total", {"model_name": "tabular"}, 50.0)]
    assert in_worker_requests(samples, live_pids={"202"}) == 3
