"""The rollout gate: a candidate version answers the golden set before it may serve.

The golden requests go one at a time to /predictions/NAME/VERSION (and, when the
policy compares with the current default, to the default too). The candidate
passes when every request answered 2xx, the scores reach the policy's minimums
and the 95th-percentile latency is within budget. `judge` is pure, so the rules
are unit-tested without a server. `tsctl rollout` gates through its own server
(rollout.py); `gate_at` gates at any inference URL, for `tsctl gate` (canary.py).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import requests

from scripts.client.rest import NotFound, TorchServeClient
from scripts.config.policies import RolloutPolicy
from scripts.operate.golden import GoldenRequest, read_golden


@dataclass(frozen=True)
class Answer:
    status: int
    seconds: float
    body: Any = None


@dataclass(frozen=True)
class Verdict:
    passed: bool
    figures: dict[str, float | int | None]
    reasons: list[str] = field(default_factory=list)


def ask(client: TorchServeClient, model: str, version: str | None,
        golden: list[GoldenRequest]) -> list[Answer]:
    """Send each golden request once, in order, to VERSION (None: the default); a refused
    connection is a 503-like failure."""
    answers = []
    for request in golden:
        started = time.perf_counter()
        try:
            response = client.predict(model, request.body, request.content_type, version=version,
                                      check=False)
            status, body = response.status_code, _json(response)
        except requests.RequestException:
            status, body = 599, None
        answers.append(Answer(status, time.perf_counter() - started, body))
    return answers


def judge(policy: RolloutPolicy, golden: list[GoldenRequest], candidate: list[Answer],
          default: list[Answer] | None) -> Verdict:
    """Score the candidate's answers against the golden set and the policy."""
    server_errors = sum(answer.status >= 500 for answer in candidate)
    client_errors = sum(400 <= answer.status < 500 for answer in candidate)
    figures: dict[str, float | int | None] = {
        "requests": len(candidate), "server_errors": server_errors, "client_errors": client_errors,
        "p95_ms": round(percentile([a.seconds for a in candidate], 95) * 1000, 1),
        "accuracy": accuracy(golden, candidate),
        "agreement": agreement(policy.compare, candidate, default) if policy.compare and default else None,
    }
    reasons = []
    if server_errors or client_errors:
        reasons.append(f"{server_errors} golden requests got a 5xx and {client_errors} a 4xx; "
                       "every one must answer 2xx")
    if policy.min_accuracy is not None and (figures["accuracy"] or 0.0) < policy.min_accuracy:
        reasons.append(f"accuracy {figures['accuracy']} is below min_accuracy {policy.min_accuracy}")
    if policy.min_agreement is not None and default is not None and (
            (figures["agreement"] or 0.0) < policy.min_agreement):
        reasons.append(f"agreement with the default ({policy.compare}) {figures['agreement']} is below "
                       f"min_agreement {policy.min_agreement}")
    if (figures["p95_ms"] or 0.0) > policy.p95_ms:
        reasons.append(f"p95 latency {figures['p95_ms']} ms is over p95_ms {policy.p95_ms:g}")
    return Verdict(not reasons, figures, reasons)


def gate_at(model: str, version: str | None, client: TorchServeClient, policy: RolloutPolicy,
            baseline: TorchServeClient | None = None) -> dict[str, Any]:
    """Send the golden set to the candidate (and the baseline, if the policy compares); the verdict.

    Raises Unauthorized or a connection error before any golden request when the
    server refuses the token or cannot be reached, and NotFound when it does not
    serve the model or version, so that those never read as a refused candidate.
    """
    golden = read_golden(policy.golden)
    client.ping()
    compared = None
    if policy.compare:
        other = baseline or client
        if other.inference_url == client.inference_url and version is None:
            raise ValueError(f"the policy compares {policy.compare!r} with the current version, but the "
                             "candidate is the default version at --url, so it would be compared with "
                             "itself: pass --baseline-url (the stable Service) or --version")
        compared = _served(ask(other, model, None, golden), model, None, other.inference_url)
    answers = _served(ask(client, model, version, golden), model, version, client.inference_url)
    verdict = judge(policy, golden, answers, compared)
    return verdict_document(model, version, client.inference_url, verdict)


def verdict_document(model: str, version: str | None, url: str, verdict: Verdict) -> dict[str, Any]:
    return {"model": model, "version": version, "url": url, **asdict(verdict)}


def accuracy(golden: list[GoldenRequest], answers: list[Answer]) -> float | None:
    """Share of golden requests with an `expect` whose answer matches every expected field."""
    scored = [(request, answer) for request, answer in zip(golden, answers, strict=True) if request.expect]
    if not scored:
        return None
    hits = sum(answer.status < 300 and isinstance(answer.body, dict)
               and all(answer.body.get(key) == value for key, value in request.expect.items())
               for request, answer in scored)
    return round(hits / len(scored), 4)


def agreement(field_name: str, candidate: list[Answer], default: list[Answer]) -> float:
    """Mean per-request agreement of one response field: cosine for number lists, else equality."""
    scores = [_agree(_field(ours, field_name), _field(theirs, field_name))
              for ours, theirs in zip(candidate, default, strict=True)]
    return round(sum(scores) / len(scores), 4)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: the value some request actually saw)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] if ordered else 0.0


def _served(answers: list[Answer], model: str, version: str | None, url: str) -> list[Answer]:
    """The answers, unless every one was 404: then the model is not served there at all."""
    if answers and all(answer.status == 404 for answer in answers):
        message = json.dumps(answers[0].body) if answers[0].body is not None else "no body"
        raise NotFound(404, "Not Found", f"{url}/predictions/{model}" + (f"/{version}" if version else ""),
                       f"{model} {version or '(default)'} is not served there ({message})")
    return answers


def _agree(ours: Any, theirs: Any) -> float:
    if ours is None or theirs is None:
        return 0.0
    if isinstance(ours, list) and isinstance(theirs, list) and ours and all(
            isinstance(x, int | float) for x in ours + theirs) and len(ours) == len(theirs):
        dot = sum(a * b for a, b in zip(ours, theirs, strict=True))
        norms = math.sqrt(sum(a * a for a in ours)) * math.sqrt(sum(b * b for b in theirs))
        return dot / norms if norms else 0.0
    return float(ours == theirs)


def _field(answer: Answer, name: str) -> Any:
    return answer.body.get(name) if answer.status < 300 and isinstance(answer.body, dict) else None


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
