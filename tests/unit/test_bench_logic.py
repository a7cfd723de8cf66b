"""The arithmetic behind `make bench`, `make tune` and `make bench-check` (no servers)."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import suppress
from typing import Any

import psutil
import pytest
import torch
import yaml

from scripts.config.model import CONFIG_DIR, load_spec
from scripts.measure.bench import median_result, ratios
from scripts.measure.bench_check import regressions
from scripts.measure.breakdown import classify, profile_shares
from scripts.measure.loadgen import LoadResult
from scripts.measure.tune import best, recommendation_yaml, score
from scripts.serve.local import group_alive, stop_group


def result(throughput: float, p99: float = 10.0, batch: float | None = None) -> LoadResult:
    return LoadResult(requests=100, failures=0, throughput=throughput, p50_ms=5, p95_ms=8, p99_ms=p99,
                      locust_cpu=0.1, mean_batch=batch)


def test_median_result_takes_each_figure_median_and_sums_errors() -> None:
    figures = median_result([result(100, 30, 4.0), result(300, 10, 8.0), result(200, 20, 6.0)])
    assert figures["throughput"] == 200 and figures["p99_ms"] == 20 and figures["mean_batch"] == 6.0
    assert figures["requests"] == 300 and figures["rounds_throughput"] == [100, 300, 200]


def test_ratios_use_the_highest_concurrency() -> None:
    rows = [{"variant": "ours", "concurrency": 1, "throughput": 10},
            {"variant": "ours", "concurrency": 32, "throughput": 90},
            {"variant": "unbatched", "concurrency": 32, "throughput": 30},
            {"variant": "plain", "concurrency": 32, "throughput": 100}]
    found = ratios(rows, {"instances_per_second": 100.0})
    assert found == {"ours_over_limit": 0.9, "ours_over_unbatched": 3.0, "ours_over_plain": 0.9}


def test_ratios_compare_ours_with_litserve_at_the_top_concurrency() -> None:
    rows = [{"variant": "ours", "concurrency": 8, "throughput": 120},
            {"variant": "litserve", "concurrency": 8, "throughput": 80},
            {"variant": "litserve", "concurrency": 1, "throughput": 300}]
    assert ratios(rows, None) == {"ours_over_litserve": 1.5}
    assert "ours_over_litserve" not in ratios([*rows, {"variant": "litserve", "concurrency": 32,
                                                        "throughput": 0}], None)


@pytest.fixture
def torch_threads() -> Iterator[None]:
    """LitAPI.setup sets torch's threads for the whole process: put them back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_litserve_app_answers_tabular_as_the_fastapi_app_does(monkeypatch: pytest.MonkeyPatch,
                                                              torch_threads: None) -> None:
    from scripts.measure.baselines.litserve_app import BenchAPI, server
    from scripts.measure.loadgen import workload

    monkeypatch.setenv("BENCH_MODEL", "tabular")
    fastapi_app = importlib.import_module("scripts.measure.baselines.fastapi_app")
    assert fastapi_app.KIND == "tabular"
    api = BenchAPI("tabular")
    config = load_spec(CONFIG_DIR / "tabular.yaml").model_config  # the YAML's batching, as ours
    assert (api.max_batch_size, api.batch_timeout, api.api_path) == (
        config["batchSize"], config["maxBatchDelay"] / 1000, "/predictions/tabular")
    api.setup("cpu")
    assert torch.get_num_threads() == 1  # configs/models/tabular.yaml: handler threads 1, as ours
    bodies = workload("tabular").bodies[:3]
    # FastAPI hands LitServe an application/json body parsed, as fastapi_app's json.loads does.
    decoded = [api.decode_request(json.loads(body)) for body in bodies]
    answers = [api.encode_response(output) for output in api.unbatch(api.predict(api.batch(decoded)))]
    expected = [fastapi_app._answer(body) for body in bodies]
    # LitServe ran the three rows as one batch, FastAPI one by one: a batched matmul may round the last
    # bit differently (seen on some CPUs), so the probabilities agree to float32 precision, the rest exactly.
    assert [{k: v for k, v in a.items() if k != "probabilities"} for a in answers] == \
        [{k: v for k, v in e.items() if k != "probabilities"} for e in expected]
    for got, want in zip(answers, expected, strict=True):
        assert got["probabilities"].keys() == want["probabilities"].keys()
        assert all(abs(got["probabilities"][k] - p) < 1e-6 for k, p in want["probabilities"].items())
    assert expected[0]["label"] in ("malignant", "benign")
    # The route reads the body (JSON parsed, anything else raw bytes), not a Request it would .json().
    (route,) = [r for r in server("tabular").app.routes if getattr(r, "path", "") == "/predictions/tabular"]
    assert route.body_field is not None and route.methods == {"POST"}


def test_litserve_app_reads_images_raw_and_json_parsed() -> None:
    """LitServe builds its route from decode_request's annotation: digits' PNG bodies must arrive as bytes."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from scripts.measure.baselines.litserve_app import BenchAPI
    from scripts.measure.loadgen import workload

    annotation = inspect.signature(BenchAPI.decode_request).parameters["request"].annotation
    app = FastAPI()

    async def echo(request: Any) -> dict[str, Any]:
        return {"type": type(request).__name__, "size": len(request)}

    echo.__annotations__ = {"request": annotation}  # objects, not this module's postponed strings
    app.add_api_route("/predictions/any", echo, methods=["POST"])
    client = TestClient(app)
    for model, expected in (("digits", "bytes"), ("tabular", "dict")):
        load = workload(model)
        answer = client.post("/predictions/any", content=load.bodies[0],
                             headers={"Content-Type": load.content_type}).json()
        assert answer["type"] == expected
        assert model != "digits" or answer["size"] == len(load.bodies[0])


def _members(group: int) -> list[int]:
    """The live (not zombie) processes of process group `group`."""
    found = []
    for candidate in psutil.process_iter():
        with suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(candidate.pid) == group and candidate.status() != psutil.STATUS_ZOMBIE:
                found.append(candidate.pid)
    return found


def test_stop_group_leaves_no_member_running() -> None:
    # The leader dies on SIGTERM; its child ignores SIGTERM and needs the SIGKILL after the grace.
    process = subprocess.Popen(["sh", "-c", "(trap '' TERM; exec sleep 60) & wait"], start_new_session=True)
    deadline = time.monotonic() + 5
    while len(_members(process.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_members(process.pid)) == 2
    stop_group(process, grace=1)
    assert process.returncode is not None and _members(process.pid) == [] and not group_alive(process.pid)


def test_regressions_flag_only_drops_beyond_the_tolerance() -> None:
    baseline = {"tolerance": 0.2, "ratios": {"a": 1.0, "b": 2.0, "c": 0.5}}
    problems = regressions(baseline, {"a": 0.81, "b": 1.5})
    assert problems == ["b: 1.500 is more than 20% below the baseline 2.000", "c: not measured"]


def _tune_row(batch_size: int, delay: int, cells: dict[int, tuple[float, float, int]]) -> dict[str, Any]:
    """One swept setting: concurrency -> (req/s, p99 ms, errors)."""
    return {"combination": {"batch_size": batch_size, "max_batch_delay": delay, "workers": 1},
            "label": f"{batch_size} / {delay}",
            "cells": {c: {"throughput": t, "p99_ms": p99, "failures": errors}
                      for c, (t, p99, errors) in cells.items()}}


def test_tune_picks_the_setting_whose_worst_load_costs_least() -> None:
    rows = score([
        _tune_row(16, 10, {1: (70, 20, 0), 32: (2800, 18, 0)}),   # best at 32, 0.13 of the best at 1
        _tune_row(16, 1, {1: (290, 5, 0), 32: (2750, 35, 0)}),    # the answer: 0.54 at 1, 0.98 at 32
        _tune_row(1, 0, {1: (540, 3, 0), 32: (620, 80, 0)}),      # best at 1, 0.22 at 32
        _tune_row(8, 1, {1: (300, 5, 2), 32: (2790, 30, 0)}),     # would win, but had errors
    ])
    assert [round(row["score"], 2) for row in rows] == [0.13, 0.54, 0.22, 0.56]
    chosen = best(rows, budget_ms=None)
    assert chosen is not None and chosen["label"] == "16 / 1"
    assert best(rows, budget_ms=50)["label"] == "16 / 1"  # type: ignore[index]
    assert best(rows, budget_ms=20)["label"] == "16 / 10"  # type: ignore[index]  # alone within 20 ms
    assert best(rows, budget_ms=10) is None
    text = recommendation_yaml("tabular", chosen, None)
    assert "batchSize: 16\n  maxBatchDelay: 1\n  minWorkers: 1\n  maxWorkers: 1" in text
    assert "1 clients 290.0 req/s (54% of the best)" in text
    assert yaml.safe_load(text) == {"model_config": {"batchSize": 16, "maxBatchDelay": 1, "minWorkers": 1,
                                                     "maxWorkers": 1}}
    on_gpu = yaml.safe_load(recommendation_yaml("tabular", chosen, None, device="gpu"))
    assert list(on_gpu) == ["gpu"] and on_gpu["gpu"]["batchSize"] == 16  # tuned on a GPU: the gpu: profile


def test_breakdown_sorts_profile_samples_into_stages_by_the_innermost_known_frame() -> None:
    worker = ("<module> (ts/model_service_worker.py:301);TorchModelServiceWorker.handle_connection "
              "(ts/model_service_worker.py:185);Service.predict (ts/service.py:135);"
              "ModelHandler.handle (handlers/base.py:145);answer_batch (handlers/batch.py:102)")
    collapsed = "\n".join([
        "process 12 (python);<module> (ts/model_service_worker.py:301);retrieve_msg (ts/protocol/"
        "otf_message_handler.py:33);_retrieve_buffer (ts/protocol/otf_message_handler.py:181) 50",
        f"{worker};_infer (handlers/batch.py:178);TorchEngine.__call__ (handlers/engines.py:46);"
        "Module._call_impl (torch/nn/modules/module.py:1789) 30",
        f"{worker};_answer (handlers/batch.py:226);"
        "dumps (json/__init__.py:238);JSONEncoder.encode (json/encoder.py:200) 10",
        f"{worker};_infer (handlers/batch.py:175);"
        "MiniLMHandler.collate (handlers/minilm.py:120) 6",
        f"{worker};HandlerMetrics.flush (handlers/metrics.py:105);Logger.info (logging/__init__.py:1489) 4",
        "not a stack line",
    ])
    shares = profile_shares(collapsed)
    assert list(shares) == ["idle (waiting for the next batch)", "inference (the engine)",
                            "serialize (json.dumps)", "collate (tokenization, padding)",
                            "metrics and logging"]
    assert shares["idle (waiting for the next batch)"] == 0.5 and shares["metrics and logging"] == 0.04
    assert classify(["Service.predict (ts/service.py:135)"]) == "TorchServe worker (framing, IPC)"
    # The text toolkit's frames: running the chunks is the engine's time, the rest of text.py collate's.
    assert classify(["TextBatch.run (handlers/text.py:70)"]) == "inference (the engine)"
    assert classify(["TextEncoder.pad (handlers/text.py:140)"]) == "collate (tokenization, padding)"
    assert classify(["main (somewhere.py:1)"]) == "other"
    assert profile_shares("") == {}
