"""Which engine a worker runs where (handlers/placement.py): CUDA and ONNX Runtime's providers faked,
then real handlers through real Contexts on this CPU machine, which TorchServe may still give a gpu_id."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from handlers.placement import CPU_PROVIDER, CUDA_PROVIDER, Placement, place_engine
from scripts.harness import LocalModel
from scripts.operate.engine_status import with_engines

MINILM = Path("configs/models/minilm.yaml")
TABULAR = Path("configs/models/tabular.yaml")
GPU_WORKER = {"gpu_id": 0, "model_dir": "/tmp"}
CPU_WORKER = {"gpu_id": None, "model_dir": "/tmp"}


def cpu_only() -> list[str]:
    return [CPU_PROVIDER]


def with_cuda_provider() -> list[str]:
    return [CUDA_PROVIDER, CPU_PROVIDER]


@pytest.fixture
def cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine whose torch sees a GPU (nothing is moved to it here: only the choice is made)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.mark.usefixtures("cuda")
def test_auto_runs_torch_on_a_gpu_worker_even_when_onnx_runtime_could() -> None:
    for providers in (cpu_only, with_cuda_provider):
        placed = place_engine("auto", GPU_WORKER, providers)
        assert (placed.backend, placed.device, placed.runs_on) == ("torch", torch.device("cuda:0"), "cuda:0")
        assert placed.on_gpu and not placed.warning
        assert placed.label == "torch on cuda:0"


def test_auto_runs_onnx_runtime_on_a_cpu_worker() -> None:
    placed = place_engine("auto", CPU_WORKER, with_cuda_provider)
    assert (placed.backend, placed.device) == ("onnx", torch.device("cpu"))
    assert placed.label == "onnxruntime CPUExecutionProvider on cpu"
    assert not placed.on_gpu and not placed.warning  # nobody asked for a GPU


@pytest.mark.usefixtures("cuda")
def test_onnx_on_a_gpu_worker_uses_the_cuda_provider_when_installed() -> None:
    placed = place_engine("onnx", {"gpu_id": 1}, with_cuda_provider)
    assert placed.backend == "onnx" and placed.device == torch.device("cpu")  # ORT copies host arrays itself
    assert placed.accelerator == torch.device("cuda:1")
    assert placed.runs_on == "CUDAExecutionProvider on cuda:1" and placed.on_gpu and not placed.warning


@pytest.mark.usefixtures("cuda")
def test_onnx_on_a_gpu_worker_without_the_cuda_provider_warns_with_the_fix() -> None:
    placed = place_engine("onnx", GPU_WORKER, cpu_only)
    assert placed.runs_on == "CPUExecutionProvider on cpu" and not placed.on_gpu
    assert "GPU stays idle" in placed.warning
    assert "onnxruntime-gpu" in placed.warning and "backend: auto" in placed.warning


def test_a_gpu_id_without_cuda_warns_and_runs_on_the_cpu() -> None:
    assert not torch.cuda.is_available()  # this machine: TorchServe may still hand out gpu_id
    for backend in ("torch", "auto"):
        placed = place_engine(backend, GPU_WORKER, cpu_only)
        assert not placed.on_gpu
        assert "has no usable CUDA" in placed.warning and "CUDA build of torch" in placed.warning


@pytest.mark.usefixtures("cuda")
def test_torch_follows_the_worker_device() -> None:
    assert place_engine("torch", {"gpu_id": 3}, cpu_only).device == torch.device("cuda:3")
    assert place_engine("torch", CPU_WORKER, cpu_only) == Placement(
        "torch", torch.device("cpu"), torch.device("cpu"), "cpu")


def test_a_missing_onnx_runtime_counts_as_no_cuda_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def missing() -> list[str]:
        raise ImportError("no onnxruntime")

    assert "GPU stays idle" in place_engine("onnx", GPU_WORKER, missing).warning


def test_shipped_minilm_on_a_cpu_worker_runs_onnx_runtime_and_says_so(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO), LocalModel.from_config(MINILM, {"warmup": False}) as model:
        assert model.handler.placement is not None
        assert model.handler.placement.label == "onnxruntime CPUExecutionProvider on cpu"
        assert model.handler.engine.__class__.__name__ == "OnnxEngine"
    ready = [r.getMessage() for r in caplog.records if "ready in" in r.getMessage()]
    assert ready and "engine onnxruntime CPUExecutionProvider on cpu (backend: auto)" in ready[0]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "WARNING:" in r.getMessage()]


def test_a_worker_given_a_gpu_it_cannot_use_warns_once_and_still_answers(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO), LocalModel.from_config(TABULAR, {"warmup": False}, gpu=0) as model:
        metric_lines = [r.getMessage() for r in caplog.records if "[METRICS]HandlerEngine" in r.getMessage()]
        result = model.run([model_request()])[0]
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "WARNING:" in r.getMessage()]
    assert len(warnings) == 1 and "CUDA build of torch" in warnings[0]
    assert result.status == 200
    assert metric_lines and "Engine:torch on cpu" in metric_lines[0]


def model_request() -> object:
    from scripts.harness import RawRequest

    return RawRequest.json({"features": [1.0] * 30})


def test_tsctl_status_names_each_live_workers_engine_and_skips_replaced_ones() -> None:
    states = {"minilm": {"default": "1.0", "versions": {"1.0": {"workers": [{"id": "9000", "pid": 11}]}}}}
    engines = {("minilm", "1.0", 11): "torch on cuda:0",
               ("minilm", "1.0", 7): "onnxruntime CPUExecutionProvider on cpu"}  # a replaced worker
    shown = with_engines(states, engines)
    assert shown["minilm"]["versions"]["1.0"]["engines"] == {"9000": "torch on cuda:0"}
