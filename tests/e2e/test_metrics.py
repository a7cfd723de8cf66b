"""Our handler metrics, scraped from a real TorchServe's Prometheus endpoint after traffic."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import torch

from scripts.build import datasets
from scripts.client.prometheus import histogram_mean, increase, scrape, settled_scrape, total
from tests.conftest import FIGURES
from tests.e2e.conftest import Server

pytestmark = pytest.mark.e2e
TABULAR = {"ModelName": "tabular", "ModelVersion": "1.0"}


def test_handler_metrics_after_concurrent_traffic(server: Server) -> None:
    rows = datasets.breast_cancer().held_out_x[:96].tolist()
    bodies = [json.dumps({"features": row}).encode() for row in rows] + [b"{broken"] * 8
    before = scrape(server.metrics_url)

    def post(body: bytes) -> int:
        return requests.post(f"{server.inference_url}/predictions/tabular", data=body,
                             headers={"Content-Type": "application/json"}, timeout=60).status_code

    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(post, bodies))
    assert statuses.count(200) == 96 and statuses.count(400) == 8
    responses_before = total(before, "HandlerResponses_total", **TABULAR)
    after = settled_scrape(server.metrics_url, lambda samples:
                           total(samples, "HandlerResponses_total", **TABULAR) - responses_before >= 104)

    raw = requests.get(f"{server.metrics_url}/metrics", timeout=10).text
    # Exported under the declared names (what a real Prometheus stores), not the parser's.
    assert "\nHandlerResponses_total{" in raw and "\nBatchRequests_sum{" in raw

    def grew(name: str, **labels: str) -> float:
        return increase(before, after, name, **labels)

    assert grew("HandlerResponses_total", Status="200", **TABULAR) == 96
    assert grew("HandlerResponses_total", Status="400", **TABULAR) == 8
    assert grew("HandlerErrors_total", Kind="InvalidInput", **TABULAR) == 8
    mean_batch = histogram_mean(before, after, "BatchRequests", **TABULAR)
    assert mean_batch is not None and mean_batch > 1, mean_batch  # concurrency really batched
    assert histogram_mean(before, after, "BatchInstances", **TABULAR) >= mean_batch
    for stage in ("preprocess", "collate", "inference", "postprocess", "serialize"):
        seconds = histogram_mean(before, after, "HandlerStageSeconds", Stage=stage, **TABULAR)
        assert seconds is not None and 0 < seconds < 1, (stage, seconds)
    assert grew("ts_inference_requests_total", model_name="tabular") == 104
    device_memory = [s for s in after if s.name == "DeviceMemoryAllocatedBytes"]
    assert bool(device_memory) == torch.cuda.is_available()  # emitted on GPU workers only
    FIGURES["tabular mean requests per forward pass (32 concurrent clients, from metrics)"] = (
        f"{mean_batch:.2f}")


def test_the_client_reads_one_metric_family_by_name(server: Server) -> None:
    with server.client() as client:
        client.predict("tabular", Path("build/examples/tabular.json").read_bytes(), "application/json")
        samples = client.metrics(("ts_inference_requests_total",))
    assert samples and {sample.name for sample in samples} == {"ts_inference_requests_total"}
    assert total(samples, "ts_inference_requests_total", model_name="tabular") >= 1
