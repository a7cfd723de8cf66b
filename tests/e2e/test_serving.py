"""End to end over HTTP: real models, real TorchServe, held-out data (bad input: test_protocols.py)."""

from __future__ import annotations

import gzip
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from handlers.runtime import batch_sizes
from scripts.build import datasets
from scripts.build.models import digit_png
from tests.conftest import FIGURES
from tests.e2e.conftest import MODELS, Server
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


def test_every_worker_warmed_up_at_every_batch_size_before_ready(server: Server) -> None:
    """READY means warm: each worker logged its warm-up before initialize returned, over the sizes an
    eager engine is warmed at (handlers.runtime.batch_sizes: 1, 2, 4, ... and batchSize itself)."""
    # TorchServe's log4j2 rolls model_log.log at midnight (model_log.DD-Mon.log.gz): read those too.
    logs = server.workdir / "logs"
    log = "".join(gzip.decompress(path.read_bytes()).decode() for path in sorted(logs.glob("model_log.*.gz")))
    log += (logs / "model_log.log").read_text()
    for model in MODELS:
        config = yaml.safe_load(Path(f"configs/models/{model}.yaml").read_text())["model_config"]
        warmed = batch_sizes(config["batchSize"], buckets=False)
        assert warmed[0] == 1 and warmed[-1] == config["batchSize"]
        sizes = re.escape(str(warmed))
        pattern = re.compile(rf"W-\d+-{model}_\S* .*warm-up: batch sizes {sizes} x (\d+) input")
        found = pattern.search(log)
        assert found, f"no warm-up line for {model} over batch sizes {warmed}"
        assert int(found[1]) >= 1
