"""The minilm handler against sentence-transformers' own encoding of the same texts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scripts.harness import FormField, LocalModel, RawRequest
from tests.helpers import SENTENCES, sentence_transformers_embeddings

CONFIG = Path("configs/models/minilm.yaml")


@pytest.fixture(scope="module")
def minilm() -> LocalModel:
    return LocalModel.from_config(CONFIG)


def test_embeddings_equal_sentence_transformers(minilm: LocalModel) -> None:
    results = minilm.run([
        RawRequest(SENTENCES[0].encode(), "text/plain"),
        RawRequest.json({"text": SENTENCES[1:]}),
    ])
    assert [r.status for r in results] == [200, 200]
    ours = np.array([results[0].json()["embedding"]] + [e["embedding"] for e in results[1].json()])
    reference = sentence_transformers_embeddings(SENTENCES)
    assert ours.shape == (len(SENTENCES), 384)
    cosines = (ours * reference).sum(axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(
        reference, axis=1)
    assert cosines.min() >= 0.9999, cosines
    assert np.linalg.norm(ours, axis=1) == pytest.approx(1.0, abs=1e-5)


def test_bad_texts_fail_alone(minilm: LocalModel) -> None:
    results = minilm.run([
        RawRequest.json({"text": ""}),
        RawRequest.json({"text": 42}),
        RawRequest.json({"sentence": "wrong field"}),
        RawRequest.json({"text": "fine"}),
        RawRequest.json({"text": ["ok", None]}),
        RawRequest(b"\xff\xfe\xfa", "text/plain"),
        RawRequest.json({"text": []}),
    ])
    assert [r.status for r in results] == [400, 400, 400, 200, 400, 400, 400]
    assert "text[1]" in results[4].json()["error"]


def test_lone_surrogate_fails_only_its_own_request(minilm: LocalModel) -> None:
    results = minilm.run([RawRequest.json({"text": "hi"}), RawRequest(b'{"text": "\\ud800"}'),
                          RawRequest.json({"text": "there"})])
    assert [r.status for r in results] == [200, 400, 200]


def test_limits_are_413() -> None:
    with LocalModel.from_config(CONFIG, {"max_instances": 2, "max_chars": 10, "warmup": False}) as small:
        results = small.run([
            RawRequest.json({"text": ["a", "b", "c"]}),
            RawRequest.json({"text": "x" * 11}),
            RawRequest.json({"text": "y" * 10}),
        ])
    assert [r.status for r in results] == [413, 413, 200]


def test_length_buckets_do_not_change_the_embeddings(minilm: LocalModel) -> None:
    texts = [SENTENCES[7], SENTENCES[5], SENTENCES[0], SENTENCES[3]]  # long, short, medium, medium
    bucketed = minilm.run([RawRequest.json({"text": texts})])[0].json()
    with LocalModel.from_config(CONFIG, {"length_buckets": False, "warmup": False}) as one_pad:
        padded = one_pad.run([RawRequest.json({"text": texts})])[0].json()
    for a, b in zip(bucketed, padded, strict=True):
        assert np.dot(a["embedding"], b["embedding"]) >= 0.99999


def test_request_over_its_token_or_character_budget_is_413_alone(minilm: LocalModel) -> None:
    """Budgets count all texts of one request (form fields too); the others in its batch answer."""
    alone = minilm.run([RawRequest.json({"text": ["one two three", "hello world"]})])[0].json()
    five_tokens = "one two three"  # [CLS] one two three [SEP]
    with LocalModel.from_config(CONFIG, {"max_request_tokens": 300, "max_request_chars": 2000,
                                         "warmup": False}) as budgeted:
        results = budgeted.run([
            RawRequest.json({"text": [five_tokens] * 60}),  # 300 tokens: at the budget
            RawRequest.json({"text": [five_tokens] * 61}),
            RawRequest.multipart(*(FormField(name, json.dumps({"text": [five_tokens] * 31}).encode(),
                                             "application/json") for name in "ab")),
            RawRequest.json({"text": "x" * 2001}),
            RawRequest(b"hello world", "text/plain"),
        ])
    assert [r.status for r in results] == [200, 413, 413, 413, 200]
    assert [r.json()["error"] for r in results[1:4]] == [
        "305 tokens in one request; the limit is 300 (max_request_tokens)",
        "310 tokens in one request; the limit is 300 (max_request_tokens)",
        "2001 characters in one request; the limit is 2000 (max_request_chars)",
    ]
    assert results[1].json()["code"] == 413
    assert np.allclose([e["embedding"] for e in results[0].json()], [alone[0]["embedding"]] * 60, atol=1e-5)
    assert np.allclose(results[4].json()["embedding"], alone[1]["embedding"], atol=1e-5)
