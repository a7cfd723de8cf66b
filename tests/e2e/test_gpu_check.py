"""`make gpu-check` on this CPU machine: it says there is no CUDA and exits 0, and its whole path
(in-process agreement and speed, then a real TorchServe under locust) runs with the CPU standing in."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from scripts.measure import gpu_check


def test_without_cuda_it_says_so_and_exits_0(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert not torch.cuda.is_available()
    with caplog.at_level(logging.INFO):
        assert gpu_check.main(["--out", str(tmp_path)]) == 0
    assert "no CUDA device here" in caplog.text
    assert not list(tmp_path.iterdir())  # nothing measured, nothing written


def test_the_cpu_path_measures_in_process_then_served(tmp_path: Path) -> None:
    code = gpu_check.main(["--cpu-only", "--models", "tabular", "--batches", "4", "--rounds", "2",
                           "--clients", "4", "--seconds", "2", "--out", str(tmp_path)])
    assert code == 0
    inprocess = json.loads((tmp_path / "gpu-inprocess.json").read_text())["models"]["tabular"]
    assert inprocess["engine"] == "torch on cpu"
    assert inprocess["agreement"]["labels_equal"] == 1.0 and inprocess["agreement"]["max_abs_diff"] < 1e-6
    sizes = [row["batch"] for row in inprocess["device"]]
    assert sizes == [4, 64]  # the asked size, and the GPU profile's batchSize for served / in-process
    assert all(row["requests_per_s"] > 0 and 0 < row["engine_share"] < 1 for row in inprocess["device"])
    served = json.loads((tmp_path / "gpu-served.json").read_text())
    (worker,) = served["workers"]["tabular"]
    assert worker["gpu"] is False and worker["engine"] == "torch on cpu" and worker["status"] == "READY"
    (run,) = served["runs"]
    assert run["failures"] == 0 and run["requests_per_s"] > 0 and run["batch_size"] == 64
    expected = run["requests_per_s"] / run["in_process_requests_per_s"]
    assert run["served_over_in_process"] == pytest.approx(expected, abs=1e-3)  # written to 3 places
