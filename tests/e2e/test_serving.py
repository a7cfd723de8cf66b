"""End to end over HTTP: real models, real TorchServe, held-out data, mixed good and bad requests."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import requests
import yaml

from scripts import datasets
from scripts.build_models import digit_png
from tests.e2e.conftest import FIGURES, MODELS, Server
from tests.helpers import (
    SENTENCES,
    reference_digits,
    reference_tabular,
    sentence_transformers_embeddings,
)

pytestmark = pytest.mark.e2e
CONCURRENCY = 16


def post(server: Server, model: str, body: bytes, content_type: str) -> requests.Response:
    return requests.post(f"{server.inference_url}/predictions/{model}", data=body,
                         headers={"Content-Type": content_type}, timeout=60)


def post_all(server: Server, calls: list[tuple[str, bytes, str]]) -> list[requests.Response]:
    """Send every call at once from CONCURRENCY threads, so TorchServe batches them."""
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        return list(pool.map(lambda call: post(server, *call), calls))


def worker_pids(server: Server) -> dict[str, list[int]]:
    with server.client() as client:
        return {m: sorted(w["pid"] for v in client.describe(m) for w in v["workers"]) for m in MODELS}


def test_archives_carry_their_yaml_model_config(server: Server) -> None:
    with server.client() as client:
        for model in MODELS:
            described = client.describe(model)[0]
            wanted = yaml.safe_load(open(f"configs/models/{model}.yaml"))["model_config"]
            assert described["batchSize"] == wanted["batchSize"]
            assert described["maxBatchDelay"] == wanted["maxBatchDelay"]
            assert described["minWorkers"] == wanted["minWorkers"]


def served_accuracy(server: Server, calls: list[tuple[str, bytes, str]], field: str,
                    reference: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of the served answers; each must also equal the in-process model's answer."""
    answers = post_all(server, calls)
    assert all(a.status_code == 200 for a in answers)
    served = np.array([a.json()[field] for a in answers])
    np.testing.assert_array_equal(served, reference)
    return float((served == labels).mean())


def test_tabular_held_out_accuracy(server: Server) -> None:
    split = datasets.breast_cancer()
    calls = [("tabular", json.dumps({"features": row.tolist()}).encode(), "application/json")
             for row in split.held_out_x]
    accuracy = served_accuracy(server, calls, "class_index", reference_tabular(split.held_out_x),
                               split.held_out_y)
    FIGURES["tabular held-out accuracy over HTTP"] = f"{accuracy:.4f} ({len(calls)} rows)"
    assert accuracy >= 0.93


def test_digits_held_out_accuracy(server: Server) -> None:
    split = datasets.digits()
    calls = [("digits", digit_png(image), "image/png") for image in split.held_out_x]
    accuracy = served_accuracy(server, calls, "digit", reference_digits(split.held_out_x),
                               split.held_out_y)
    FIGURES["digits held-out accuracy over HTTP"] = f"{accuracy:.4f} ({len(calls)} images)"
    assert accuracy >= 0.95


def test_minilm_matches_sentence_transformers(server: Server) -> None:
    calls = [("minilm", json.dumps({"text": text}).encode(), "application/json")
             for text in SENTENCES]
    answers = post_all(server, calls)
    assert all(a.status_code == 200 for a in answers)
    ours = np.array([a.json()["embedding"] for a in answers])
    reference = sentence_transformers_embeddings(SENTENCES)
    cosines = (ours * reference).sum(axis=1) / (
        np.linalg.norm(ours, axis=1) * np.linalg.norm(reference, axis=1))
    FIGURES["minilm cosine to sentence-transformers (min)"] = f"{cosines.min():.6f}"
    assert cosines.min() >= 0.9999


def mixed_wave() -> list[tuple[tuple[str, bytes, str], Any]]:
    """Calls with what each must get back: an int class/digit, or an int 4xx status."""
    cancer, digits = datasets.breast_cancer(), datasets.digits()
    rows, images = cancer.held_out_x[:12], digits.held_out_x[:12]
    good_rows, good_digits = reference_tabular(rows), reference_digits(images)
    png = digit_png(images[0])
    bad: list[tuple[tuple[str, bytes, str], Any]] = [
        (("tabular", b"{oops", "application/json"), 400),
        (("tabular", json.dumps({"features": [1.0] * 29}).encode(), "application/json"), 400),
        (("tabular", b'{"features": [NaN]}', "application/json"), 400),
        (("tabular", png, "image/png"), 415),
        (("digits", png[:40], "image/png"), 400),
        (("digits", b"not an image at all", "application/octet-stream"), 400),
        (("digits", b'{"x": 1}', "application/json"), 415),
        (("minilm", b'{"text": ""}', "application/json"), 400),
        (("minilm", b'{"text": 5}', "application/json"), 400),
        (("minilm", b"[1, 2", "application/json"), 400),
    ]
    good: list[tuple[tuple[str, bytes, str], Any]] = []
    for row, label in zip(rows, good_rows, strict=True):
        good.append((("tabular", json.dumps({"features": row.tolist()}).encode(),
                      "application/json"), ("class_index", int(label))))
    for image, label in zip(images, good_digits, strict=True):
        good.append((("digits", digit_png(image), "image/png"), ("digit", int(label))))
    for text in SENTENCES[:4]:
        good.append((("minilm", json.dumps({"text": text}).encode(), "application/json"),
                     ("embedding", None)))
    # Interleave so bad requests ride in the same batches as good ones.
    wave = []
    for index in range(max(len(good), len(bad))):
        wave.extend(good[index:index + 1] + bad[index:index + 1])
    return wave


def test_mixed_wave_good_answers_right_bad_ones_own_4xx_workers_survive(server: Server) -> None:
    before = worker_pids(server)
    wave = mixed_wave() * 3
    answers = post_all(server, [call for call, _ in wave])
    for (call, expected), answer in zip(wave, answers, strict=True):
        if isinstance(expected, int):
            assert answer.status_code == expected, (call[0], answer.text)
            assert answer.json()["error"], answer.text
        else:
            field, value = expected
            assert answer.status_code == 200, (call[0], answer.text)
            if value is None:
                assert len(answer.json()[field]) == 384
            else:
                assert answer.json()[field] == value
    assert worker_pids(server) == before
