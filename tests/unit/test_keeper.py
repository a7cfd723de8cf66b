"""The keeper's pieces: key expiry arithmetic, the cached check, and its HTTP answers; and the key
file as a client reads it while the keeper has TorchServe rewrite it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from scripts.client.rest import KeyFile
from scripts.serve.keeper import (
    CachedCheck,
    KeyRenewer,
    due,
    health_handler,
    parse_address,
    parse_instant,
    token_lifetime_min,
    watch_server,
)

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
Health = tuple[str, list[tuple[bool, str]]]  # the URL, and the answers the check gives (last one wins)


def test_java_instants_parse_with_nanoseconds() -> None:
    assert parse_instant("2026-11-30T12:00:01.123456789Z") == NOW + timedelta(seconds=1, microseconds=123456)
    assert parse_instant("2026-11-30T12:00:00Z") == NOW


@pytest.mark.parametrize(("left_s", "renewed"), [(3600, []), (1801, []), (1799, ["inference"]),
                                                 (-5, ["inference"])])
def test_a_key_is_renewed_once_less_than_half_its_lifetime_is_left(left_s: int, renewed: list[str]) -> None:
    expires = {"inference": NOW + timedelta(seconds=left_s), "management": NOW + timedelta(hours=1)}
    assert due(expires, lifetime_s=3600, now=NOW) == renewed


def test_keys_are_checked_often_enough_for_short_lifetimes() -> None:
    renewer = KeyRenewer("http://127.0.0.1:1", key_file=Path("absent"), lifetime_s=60)
    assert renewer.poll_interval() < 60 / 2  # renewed before expiry even at the shortest lifetime
    assert renewer.renew_due() == []  # no key file: TorchServe not started, nothing to renew


def test_the_check_runs_at_most_once_per_max_age() -> None:
    calls: list[bool] = []
    now = [0.0]

    def check(live: bool) -> tuple[bool, str]:
        calls.append(live)
        return True, "ready"

    cached = CachedCheck(check, max_age=1.0, clock=lambda: now[0])
    cached(False), cached(False), cached(True)
    now[0] = 1.5
    cached(False)
    assert calls == [False, True, False]


@pytest.fixture()
def health_url() -> Iterator[Health]:
    answers = [(True, "ready: tabular (1 READY)")]
    server = ThreadingHTTPServer(("127.0.0.1", 0), health_handler(lambda live: answers[-1]))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", answers
    server.shutdown()
    server.server_close()


def test_ready_and_live_answer_200_or_503_with_the_reason(health_url: Health) -> None:
    url, answers = health_url
    ok = requests.get(f"{url}/ready", timeout=5)
    assert (ok.status_code, ok.json()) == (200, {"ready": True, "detail": "ready: tabular (1 READY)"})
    answers.append((False, "not ready: digits has 0 READY of 1 workers"))
    refused = requests.get(f"{url}/ready", timeout=5)
    assert refused.status_code == 503 and refused.json()["ready"] is False
    assert requests.get(f"{url}/live", timeout=5).json() == {"live": False, "detail": answers[-1][1]}
    missing = requests.get(f"{url}/ping", timeout=5)
    assert missing.status_code == 404 and "/ready" in missing.json()["error"]


@pytest.mark.parametrize("text", ["8083", "localhost", "host:port"])
def test_a_bad_health_address_says_the_fix(text: str) -> None:
    with pytest.raises(SystemExit, match="fix: e.g. 127.0.0.1:8083"):
        parse_address(text)


def test_the_key_lifetime_is_the_one_torchserve_uses() -> None:
    assert token_lifetime_min({}, {}) == 60
    assert token_lifetime_min({"token_expiration_min": "5"}, {"TS_TOKEN_EXPIRATION_TIME_MIN": "9"}) == 5
    envvars = {"token_expiration_min": "5", "enable_envvars_config": "true"}
    assert token_lifetime_min(envvars, {"TS_TOKEN_EXPIRATION_TIME_MIN": "9"}) == 9


def test_the_keeper_leaves_once_torchserve_is_gone_but_not_before_it_came() -> None:
    answers = iter([False, False, True, True, False, False, False])  # starting, up, then gone
    checks: list[int] = []

    def alive() -> bool:
        checks.append(1)
        return next(answers)

    watch_server(alive, threading.Event(), every=0, gone_after=3)
    assert len(checks) == 7  # left after the third miss in a row, not during the start


def test_a_key_file_caught_mid_rewrite_is_read_again(tmp_path: Path) -> None:
    """TorchServe truncates key_file.json, then writes it: a read in between sees an empty file."""
    path = tmp_path / "key_file.json"
    path.write_text("")
    document = {"inference": {"key": "i"}, "management": {"key": "m"}, "API": {"key": "a"}}
    writer = threading.Timer(0.2, lambda: path.write_text(json.dumps(document)))
    writer.start()
    try:
        assert KeyFile.read(path) == KeyFile("i", "m", path, "a")
    finally:
        writer.join()


@pytest.mark.parametrize("text", ["{", json.dumps({"inference": {"key": "i"}})])
def test_a_key_file_that_stays_damaged_is_named(tmp_path: Path, text: str) -> None:
    path = tmp_path / "key_file.json"
    path.write_text(text)
    with pytest.raises(ValueError, match="is not TorchServe's key file"):
        KeyFile.read(path, torn_wait_s=0.1)

