"""Timeouts that fail only the slow request, against a real TorchServe.

Past responseTimeout TorchServe answers the whole batch 500 and restarts the worker,
so the handlers refuse a request over its work budget (413, before any work) and the
YAML's responseTimeout leaves a margin over the worst batch of legal requests
(scripts/measure/worst_batch.py builds it; `make worst-batch` times it).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from scripts.build import datasets
from scripts.config.model import CONFIG_DIR, ModelSpec, load_spec
from scripts.harness import RawRequest
from scripts.measure.overload import worker_state
from scripts.measure.worst_batch import (
    burst,
    digits_request,
    handler_options,
    transparent_png,
    worst_request,
    worst_texts,
)
from tests.conftest import FIGURES
from tests.e2e.conftest import Server
from tests.helpers import SENTENCES, reference_digits, sentence_transformers_embeddings

pytestmark = pytest.mark.e2e
BUDGETED = ("digits", "minilm")
SMALL = 7  # well-formed small requests sent with the over-budget one


def spec_of(model: str) -> ModelSpec:
    return load_spec(CONFIG_DIR / f"{model}.yaml")


def worker_pids(server: Server, model: str) -> list[int]:
    return [pid for pid, _ in worker_state(server, model)]


@pytest.mark.parametrize("model", BUDGETED)
def test_worst_legal_batch_answers_within_the_response_timeout(server: Server, model: str) -> None:
    spec = spec_of(model)
    timeout_s, batch_size = spec.model_config["responseTimeout"], spec.model_config["batchSize"]
    with server.client() as client:
        (described,) = client.describe(model)
    assert described["responseTimeout"] == timeout_s, "model_store/ is older than the YAML: make archive"
    worst = worst_request(spec).request
    pids = worker_pids(server, model)
    for _ in range(3):  # the batch must queue behind a busy worker; on a loaded machine it may not
        sent = burst(server, model, worst, [worst] * batch_size)
        assert [r.status_code for r in sent.responses] == [200] * batch_size
        if sent.requests_in_batch is not None:
            break
    assert sent.requests_in_batch == batch_size, "the requests did not reach the worker as one batch"
    assert sent.batch_s < timeout_s
    assert worker_pids(server, model) == pids
    FIGURES[f"{model} worst legal batch served (s, responseTimeout {timeout_s} s)"] = f"{sent.batch_s:.1f}"


@pytest.mark.parametrize("model", BUDGETED)
def test_over_budget_request_fails_alone_and_its_batch_mates_answer(server: Server, model: str) -> None:
    spec = spec_of(model)
    over, limit, small, check_answers = CASES[model](spec)
    pids = worker_pids(server, model)
    for _ in range(3):  # the burst must queue behind a busy worker; on a loaded machine it may not
        sent = burst(server, model, worst_request(spec).request, [over, *small])
        if sent.requests_in_batch is not None:
            break
    refused, *answered = sent.responses
    assert (refused.status_code, [r.status_code for r in answered]) == (413, [200] * len(small))
    assert refused.json()["type"] == "PayloadTooLarge"
    assert f"the limit is {limit}" in refused.json()["error"], refused.json()
    assert sent.requests_in_batch == len(small), "the small requests did not share one forward pass"
    check_answers([r.json() for r in answered])
    assert worker_pids(server, model) == pids


def digits_case(spec: ModelSpec) -> tuple[RawRequest, str, list[RawRequest], Any]:
    """One side x side image more than the budget holds; small requests of one held-out digit each."""
    options = handler_options(spec)
    side = int(options.max_pixels ** 0.5)
    over = digits_request([transparent_png(side)] * (options.max_request_pixels // (side * side) + 1))
    images = datasets.digits().held_out_x[:SMALL]
    small = [digits_request([transparent_png(64, index)]) for index in range(SMALL)]

    def check_answers(answers: list[Any]) -> None:
        assert [answer[0]["digit"] for answer in answers] == list(reference_digits(images))

    return over, f"{options.max_request_pixels} (max_request_pixels)", small, check_answers


def minilm_case(spec: ModelSpec) -> tuple[RawRequest, str, list[RawRequest], Any]:
    """One text more at the truncation length than the token budget holds; small one-sentence requests."""
    options = handler_options(spec)
    texts = worst_texts(options.max_request_tokens // options.max_length + 1, options.max_length)
    over = RawRequest(json.dumps({"text": texts}, ensure_ascii=False).encode(), "application/json")
    small = [RawRequest.json({"text": sentence}) for sentence in SENTENCES[:SMALL]]

    def check_answers(answers: list[Any]) -> None:
        ours = np.array([answer["embedding"] for answer in answers])
        reference = sentence_transformers_embeddings(SENTENCES[:SMALL])
        cosines = (ours * reference).sum(axis=1) / np.linalg.norm(ours, axis=1)
        cosines /= np.linalg.norm(reference, axis=1)
        assert cosines.min() >= 0.9999, cosines

    return over, f"{options.max_request_tokens} (max_request_tokens)", small, check_answers


CASES = {"digits": digits_case, "minilm": minilm_case}
