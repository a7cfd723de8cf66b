"""`make overload`'s arithmetic on locust's per-response record, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.measure.overload import Reply, figures, pacing, read_replies


def test_figures_split_accepted_from_refused_and_leave_out_sends_outside_the_window() -> None:
    replies = [
        Reply(99.0, 99.5, 200),                                 # before the window: left out
        *[Reply(100.0 + i / 10, 100.0 + i / 10 + 0.2, 200) for i in range(10)],   # 200 ms each
        *[Reply(100.0 + i / 10, 100.0 + i / 10 + 0.002, 503) for i in range(30)],  # 2 ms each
        Reply(101.0, 101.1, 500),
        Reply(110.0, 110.1, 200),                               # after the window: left out
    ]
    found = figures(replies, (100.0, 105.0), locust_cpu=0.12)
    assert (found.requests, found.seconds) == (41, 5.0)
    assert found.offered_rps == pytest.approx(8.2) and found.accepted_rps == pytest.approx(2.0)
    assert found.share_refused == pytest.approx(30 / 41, abs=1e-4)
    assert found.accepted_p50_ms == pytest.approx(200.0) and found.refused_p99_ms == pytest.approx(2.0)
    assert found.other_statuses == {"500": 1}


def test_no_refusal_gives_no_refusal_latency() -> None:
    found = figures([Reply(1.0, 1.1, 200)], (0.0, 2.0), locust_cpu=0.0)
    assert found.refused_p50_ms is None and found.share_refused == 0.0


def test_pacing_keeps_each_users_interval_twice_the_longest_accepted_wait() -> None:
    users, rate = pacing(target_rps=200.0, horizon_s=1.0, max_users=2000)
    assert (users, rate) == (400, 0.5)
    users, rate = pacing(target_rps=6000.0, horizon_s=0.5, max_users=2000)  # capped: users go faster
    assert (users, rate) == (2000, 3.0)


def test_replies_are_read_from_the_locustfile_format(tmp_path: Path) -> None:
    record = tmp_path / "replies.txt"
    record.write_text("1.000000 1.250000 200 1.0\n2.000000 2.001000 503 -\n")
    assert read_replies(record) == [Reply(1.0, 1.25, 200, "1.0"), Reply(2.0, 2.001, 503)]
    assert read_replies(tmp_path / "absent.txt") == []


def test_a_line_locust_is_still_writing_waits_for_the_next_read(tmp_path: Path) -> None:
    record = tmp_path / "replies.txt"
    record.write_text("1.000000 1.250000 200 1.0\n2.000000 2.0")
    assert read_replies(record) == [Reply(1.0, 1.25, 200, "1.0")]
