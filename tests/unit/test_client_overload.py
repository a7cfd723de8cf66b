"""TorchServeClient under overload: what it re-sends, how it backs off, when it stops, and its
circuit breaker, against scripted answers (a requests adapter; no server, no sleeping)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
import requests
from requests.adapters import BaseAdapter

from scripts.client.backoff import NO_RETRY, Backoff
from scripts.client.breaker import CircuitBreaker, CircuitOpen, State
from scripts.client.rest import Overloaded, TorchServeClient, TorchServeError

# TorchServe 0.12's words, verbatim, for a full job queue (ApiUtils.java).
QUEUE_FULL = (503, {"code": 503, "type": "ServiceUnavailableException", "message": (
    'Model "tabular" has no worker to serve inference request. Please use scale workers API to add '
    "workers. If this is a sequence inference, please check if it is closed, or expired; or exceeds "
    "maxSequenceJobQueueSize")})
OK = (200, {"class_index": 1})
Answer = tuple[int, dict[str, object]] | Exception


class FakeTime:
    """A clock that sleeping (and a scripted send) moves."""

    def __init__(self) -> None:
        self.now, self.slept = 0.0, []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Scripted(BaseAdapter):
    """Answers each request with the next scripted answer, and records what was sent."""

    def __init__(self, answers: Sequence[Answer], fake: FakeTime | None = None, takes: float = 0.0) -> None:
        super().__init__()
        self.answers = list(answers)
        self.sent: list[requests.PreparedRequest] = []
        self.fake, self.takes = fake, takes

    def send(self, request: requests.PreparedRequest, *args: object, **kwargs: object) -> requests.Response:
        self.sent.append(request)
        if self.fake:
            self.fake.now += self.takes
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        response = requests.Response()
        response.status_code, response.url, response.request = answer[0], str(request.url), request
        response.reason = "Service Unavailable" if answer[0] == 503 else "Reason"
        response._content = json.dumps(answer[1]).encode()
        return response

    def close(self) -> None:
        pass


def client_with(answers: Sequence[Answer], backoff: Backoff = NO_RETRY, breaker: CircuitBreaker | None = None,
                adapter: Scripted | None = None) -> tuple[TorchServeClient, Scripted]:
    client = TorchServeClient("http://ts:8080", overload_backoff=backoff, breaker=breaker)
    adapter = adapter or Scripted(answers)
    client.session.mount("http://", adapter)
    return client, adapter


def backoff(fake: FakeTime, attempts: int = 5, total: float = 10.0, draw: float = 1.0) -> Backoff:
    return Backoff(attempts=attempts, total_seconds=total, base_seconds=0.1, max_pause_seconds=0.3,
                   sleep=fake.sleep, clock=lambda: fake.now, draw=lambda: draw)


def test_a_queue_full_refusal_is_re_sent_with_growing_pauses_until_it_is_answered() -> None:
    fake = FakeTime()
    client, adapter = client_with([QUEUE_FULL, QUEUE_FULL, QUEUE_FULL, OK], backoff(fake))
    answer = client.predict("tabular", b"{}", "application/json")
    assert answer.status_code == 200
    assert len(adapter.sent) == 4
    assert fake.slept == pytest.approx([0.1, 0.2, 0.3])  # base x 2^retry, capped at max_pause_seconds
    assert {request.body for request in adapter.sent} == {b"{}"}  # the same request each time


def test_pauses_are_drawn_from_zero_to_the_ceiling() -> None:
    fake = FakeTime()
    client, _ = client_with([QUEUE_FULL, QUEUE_FULL, OK], backoff(fake, draw=0.5))
    client.predict("tabular", b"{}", "application/json")
    assert fake.slept == pytest.approx([0.05, 0.1])


def test_when_the_attempts_run_out_it_says_overloaded_even_with_check_false() -> None:
    fake = FakeTime()
    client, adapter = client_with([QUEUE_FULL] * 3, backoff(fake, attempts=3))
    with pytest.raises(Overloaded) as caught:
        client.predict("tabular", b"{}", "application/json", check=False)
    error = caught.value
    assert (error.status, error.attempts, len(adapter.sent)) == (503, 3, 3)
    assert isinstance(error, TorchServeError)
    text = str(error)
    assert text.startswith("overloaded: http://ts:8080/predictions/tabular refused the request")
    assert "3 sends" in text and "retrying later is safe" in text and "has no worker to serve" in text


def test_no_re_send_starts_after_the_total_time() -> None:
    fake = FakeTime()
    client, adapter = client_with([QUEUE_FULL] * 10, backoff(fake, attempts=10, total=0.25))
    with pytest.raises(Overloaded):
        client.predict("tabular", b"{}", "application/json")
    assert fake.slept == pytest.approx([0.1, 0.15])  # the second pause is cut at the deadline
    assert len(adapter.sent) == 3


def test_the_total_time_counts_from_the_first_send() -> None:
    fake = FakeTime()
    slow = Scripted([QUEUE_FULL] * 10, fake, takes=0.2)  # each refusal takes 0.2 s to come back
    client, _ = client_with([], backoff(fake, attempts=10, total=0.5), adapter=slow)
    with pytest.raises(Overloaded):
        client.predict("tabular", b"{}", "application/json")
    assert len(slow.sent) == 2  # sent at 0.0 and 0.3; at 0.5 the time is up


@pytest.mark.parametrize("answer", [
    (500, {"code": 500, "message": "Worker died."}),
    (507, {"code": 507, "message": "Worker died."}),
    (503, {"code": 503, "message": "Invalid HTTP method received"}),
    (504, {"message": "gateway timeout"}),
])
def test_other_server_errors_from_a_prediction_are_never_re_sent(answer: Answer) -> None:
    fake = FakeTime()
    client, adapter = client_with([answer, OK], backoff(fake))
    with pytest.raises(TorchServeError) as caught:
        client.predict("tabular", b"{}", "application/json")
    assert not isinstance(caught.value, Overloaded)
    assert len(adapter.sent) == 1 and fake.slept == []
    client, adapter = client_with([answer, OK], backoff(fake))
    assert client.predict("tabular", b"{}", "application/json", check=False).status_code == answer[0]


def test_without_backoff_the_first_refusal_raises_overloaded() -> None:
    client, adapter = client_with([QUEUE_FULL])
    with pytest.raises(Overloaded) as caught:
        client.predict("tabular", b"{}", "application/json")
    assert caught.value.attempts == 1 and len(adapter.sent) == 1


def test_the_breaker_opens_after_failures_and_then_refuses_without_sending() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=2, cool_down_seconds=5, clock=lambda: now[0])
    broken = requests.ConnectionError("connection refused")
    client, adapter = client_with([(500, {"message": "boom"}), broken, OK], breaker=breaker)
    assert client.predict("tabular", b"{}", "application/json", check=False).status_code == 500
    with pytest.raises(requests.ConnectionError):
        client.predict("tabular", b"{}", "application/json")
    with pytest.raises(CircuitOpen):
        client.predict("tabular", b"{}", "application/json")
    assert len(adapter.sent) == 2
    assert breaker.stats().rejected == 1 and breaker.state is State.OPEN
    now[0] = 5.0
    assert client.predict("tabular", b"{}", "application/json").status_code == 200  # the trial
    assert breaker.state is State.CLOSED


def test_every_overload_refusal_counts_against_the_server_and_a_4xx_counts_for_it() -> None:
    fake = FakeTime()
    breaker = CircuitBreaker(failure_threshold=3, cool_down_seconds=5, clock=lambda: fake.now)
    bad_input = (400, {"code": 400, "message": "'features' must hold exactly 30 numbers"})
    client, adapter = client_with([bad_input, QUEUE_FULL, QUEUE_FULL, QUEUE_FULL, OK], backoff(fake),
                                  breaker)
    assert client.predict("tabular", b"{}", "application/json", check=False).status_code == 400
    assert breaker.stats().consecutive_failures == 0
    with pytest.raises(CircuitOpen):  # the third refusal opened it; the retry loop stops there
        client.predict("tabular", b"{}", "application/json")
    assert len(adapter.sent) == 4 and breaker.stats().opens == 1


def test_backoff_settings_are_checked_and_one_attempt_means_no_pause() -> None:
    assert list(NO_RETRY.pauses()) == []
    with pytest.raises(ValueError, match="attempts must be >= 1"):
        Backoff(attempts=0)
    with pytest.raises(ValueError, match="base_seconds"):
        Backoff(base_seconds=0)
