"""Over HTTP against a real TorchServe: the bad-input battery riding in batches with good
requests of every shape, on every route, and an independent OIP client on /v2.
"""

from __future__ import annotations

import itertools
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from scripts.build import datasets
from scripts.client.prometheus import Sample, histogram_mean, scrape, settled_scrape, total
from scripts.measure.overload import worker_state
from tests.battery import Bad, Good, bad_calls, check_bad, check_good, good_calls
from tests.conftest import FIGURES
from tests.e2e.conftest import MODELS, Server
from tests.helpers import SENTENCES, reference_tabular, sentence_transformers_embeddings

pytestmark = pytest.mark.e2e
CONCURRENCY = 16
BATCH_LINE = re.compile(r"batch: (\d+) requests, (\d+) rejected before inference")


def worker_pids(server: Server) -> dict[str, list[int]]:
    return {model: [pid for pid, _ in worker_state(server, model)] for model in MODELS}


def handled(samples: list[Sample]) -> float:
    """Responses our handlers counted, all models."""
    return sum(total(samples, "HandlerResponses_total", ModelName=model) for model in MODELS)


def log_since(log: Path, offset: int) -> str:
    with log.open("rb") as handle:
        handle.seek(offset)
        return handle.read().decode("utf-8", "replace")


def batches_logged(text: str) -> list[tuple[int, int]]:
    """(requests, rejected) for every batch our handlers logged (one line per batch)."""
    return [(int(m[1]), int(m[2])) for m in BATCH_LINE.finditer(text)]


def mixed_batches(text: str) -> list[tuple[int, int]]:
    """The logged batches that held both good and bad requests."""
    return [(size, rejected) for size, rejected in batches_logged(text) if 0 < rejected < size]


def test_battery_rides_in_batches_with_good_requests_and_workers_survive(server: Server) -> None:
    bad, good = bad_calls(), good_calls()
    goods = itertools.cycle(good)
    wave: list[Bad | Good] = [item for b in bad for item in (b, next(goods), next(goods))] * 3
    embeddings = dict(zip(SENTENCES, sentence_transformers_embeddings(SENTENCES), strict=True))
    log = server.workdir / "logs" / "model_log.log"
    offset = log.stat().st_size
    before, metrics_before = worker_pids(server), scrape(server.metrics_url)

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        answers = list(pool.map(lambda item: item.call.send(server.inference_url), wave))

    for item, answer in zip(wave, answers, strict=True):
        if isinstance(item, Bad):
            check_bad(item, answer.status_code, answer.text)
        else:
            assert answer.status_code == 200, (item.call.model, item.call.route, answer.text)
            check_good(item, answer.json(), embeddings)
    assert worker_pids(server) == before
    # Workers' metrics and log lines reach the frontend a little after the responses: wait for every
    # response to be counted, then for the log to show a mixed batch (or give up after a deadline).
    metrics_after = settled_scrape(server.metrics_url,
                                   lambda samples: handled(samples) - handled(metrics_before) >= len(wave))
    deadline = time.monotonic() + 10
    while not mixed_batches(logged := log_since(log, offset)) and time.monotonic() < deadline:
        time.sleep(0.1)
    # Client mistakes are logged at INFO; only handler bugs take these paths (with a traceback).
    assert "unexpected error" not in logged and "forward pass failed" not in logged
    # Handlers log each batch that had rejections; every batch's size is in the metrics.
    batches, mixed = batches_logged(logged), mixed_batches(logged)
    mean_batch = {model: histogram_mean(metrics_before, metrics_after, "BatchRequests", ModelName=model)
                  for model in MODELS}
    FIGURES["battery"] = (f"{len(bad)} distinct bad requests x3 with {2 * len(wave) // 3} good ones; "
                          f"{len(mixed)} batches held good and bad requests together (largest "
                          f"{max((s for s, _ in mixed), default=0)} requests); mean good requests per "
                          f"forward pass: " + ", ".join(f"{m} {v:.1f}" for m, v in mean_batch.items() if v))
    assert all(value is not None for value in mean_batch.values()), mean_batch
    assert max(value or 0 for value in mean_batch.values()) > 1.5, mean_batch  # batches held several
    assert mixed, f"no batch held both good and bad requests: {batches}"


def test_every_route_gives_the_same_answer(server: Server) -> None:
    row = datasets.breast_cancer().held_out_x[0].tolist()
    expected = int(reference_tabular(np.array([row], dtype=np.float32))[0])
    routes = {
        "/predictions/tabular": {"features": row},
        "/predictions/tabular/1.0": {"features": row},
        "/v1/models/tabular:predict": {"instances": [row]},
        "/v2/models/tabular/infer": {"inputs": [{"name": "features", "shape": [1, 30],
                                                 "datatype": "FP32", "data": row}]},
    }
    got = {}
    for path, document in routes.items():
        answer = requests.post(server.inference_url + path, json=document, timeout=60)
        assert answer.status_code == 200, (path, answer.text)
        body = answer.json()
        got[path] = (body.get("class_index") if "class_index" in body
                     else body["predictions"][0]["class_index"] if "predictions" in body
                     else next(o["data"][0] for o in body["outputs"] if o["name"] == "class_index"))
    assert set(got.values()) == {expected}, got


def test_an_independent_oip_client_works_on_v2_infer(server: Server) -> None:
    import tritonclient.http as triton

    rows = datasets.breast_cancer().held_out_x[:5]
    host = server.inference_url.removeprefix("http://")
    client = triton.InferenceServerClient(url=host, network_timeout=60.0)
    try:
        features = triton.InferInput("features", list(rows.shape), "FP32")
        features.set_data_from_numpy(rows.astype(np.float32), binary_data=False)
        result = client.infer("tabular", [features], request_id="triton-1", outputs=[
            triton.InferRequestedOutput("class_index", binary_data=False),
            triton.InferRequestedOutput("label", binary_data=False)])
        np.testing.assert_array_equal(result.as_numpy("class_index"), reference_tabular(rows))
        assert result.get_response()["id"] == "triton-1"
        assert set(result.as_numpy("label").astype(str)) <= {"malignant", "benign"}

        texts = triton.InferInput("text", [2], "BYTES")
        texts.set_data_from_numpy(np.array([s.encode() for s in SENTENCES[:2]], dtype=object),
                                  binary_data=False)
        embedded = client.infer("minilm", [texts]).as_numpy("embedding")
        reference = sentence_transformers_embeddings(SENTENCES[:2])
        assert embedded.shape == (2, 384)
        assert float((embedded * reference).sum(axis=1).min()) >= 0.9999
    finally:
        client.close()
