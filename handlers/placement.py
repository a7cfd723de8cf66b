"""Where a worker's engine runs: the backend and device it gets, and what actually runs.

TorchServe gives a worker a `gpu_id` when the model's `deviceType` is gpu and the
server has GPUs (`number_of_gpu`). What runs on that GPU depends on more than the
id: a CPU build of torch cannot use it, and PyPI's `onnxruntime` has only the CPU
execution provider, so `backend: onnx` on a GPU worker quietly runs on the host.
`place_engine` decides once per worker, says what runs in one label (the ready
line, the HandlerEngine metric and `tsctl status` all show it), and returns the
warning, with its fix, when the config asked for the GPU and gets the CPU.

    backend: auto   ONNX Runtime on a CPU worker (the fastest exact engine there, 1.27x eager
                    torch served), torch on a CUDA worker (measured there; ONNX Runtime's CUDA
                    provider is not on PyPI's onnxruntime, and was not measured)
    backend: torch  torch on the worker's device
    backend: onnx   ONNX Runtime; its CUDA provider on a CUDA worker when installed
                    (`pip install onnxruntime-gpu`), else the CPU, with a warning
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
GPU_TORCH_FIX = ("install a CUDA build of torch on this machine (`pip install torch==2.13.0` from PyPI's "
                 "default index is one; the CPU build comes from the CPU index), or set deviceType: cpu")
ONNX_GPU_FIX = ("install ONNX Runtime's CUDA build (`pip install onnxruntime-gpu`, the `gpu` extra) in "
                "place of onnxruntime, or set backend: auto (torch on the GPU, ONNX Runtime on the CPU)")


@dataclass(frozen=True)
class Placement:
    """The engine a worker builds: its backend, where its inputs go, and what runs them."""

    backend: str                 # "torch" or "onnx": what build_engine builds
    device: torch.device         # where the batch goes: the GPU for torch there, the host for ONNX Runtime
    accelerator: torch.device    # the worker's device (ONNX Runtime's CUDA provider uses its index)
    runs_on: str                 # "cuda:0", "cpu", or ONNX Runtime's provider with its device
    warning: str = ""            # set when the config asked for the GPU and gets the CPU

    @property
    def label(self) -> str:
        """What runs, in one phrase: `torch on cuda:0`, `onnxruntime CPUExecutionProvider on cpu`."""
        engine = "torch" if self.backend == "torch" else "onnxruntime"
        return f"{engine} {self.runs_on}" if self.backend == "onnx" else f"{engine} on {self.runs_on}"

    @property
    def on_gpu(self) -> bool:
        return "cuda" in self.runs_on


def pick_device(system_properties: Mapping[str, Any]) -> torch.device:
    """CUDA when TorchServe assigned this worker a GPU (`gpu_id`) and CUDA works, else CPU."""
    gpu_id = system_properties.get("gpu_id")
    if gpu_id is not None and torch.cuda.is_available():
        return torch.device(f"cuda:{int(gpu_id)}")
    return torch.device("cpu")


def onnx_providers() -> list[str]:
    """The execution providers the installed ONNX Runtime has (imported only when asked)."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def place_engine(backend: str, system_properties: Mapping[str, Any],
                 providers: Callable[[], list[str]] = onnx_providers) -> Placement:
    """Decide the engine's backend and device for a worker given `system_properties` by TorchServe."""
    gpu_asked = system_properties.get("gpu_id") is not None
    accelerator = pick_device(system_properties)
    warning = ""
    if gpu_asked and accelerator.type == "cpu":
        warning = (f"TorchServe gave this worker GPU {system_properties['gpu_id']}, but torch "
                   f"{torch.__version__} has no usable CUDA, so the model runs on the CPU; "
                   f"fix: {GPU_TORCH_FIX}")
    if backend == "torch" or (backend == "auto" and accelerator.type == "cuda"):
        return Placement("torch", accelerator, accelerator, str(accelerator), warning)
    # ONNX Runtime: asked for, or auto on the CPU.
    if accelerator.type == "cuda" and CUDA_PROVIDER in _safe(providers):
        return Placement("onnx", torch.device("cpu"), accelerator, f"{CUDA_PROVIDER} on {accelerator}",
                         warning)
    if accelerator.type == "cuda":
        warning = (f"backend: onnx on {accelerator}, but this ONNX Runtime has only {_safe(providers)}, "
                   f"so the model runs on the CPU while the GPU stays idle; fix: {ONNX_GPU_FIX}")
    return Placement("onnx", torch.device("cpu"), accelerator, f"{CPU_PROVIDER} on cpu", warning)


def _safe(providers: Callable[[], list[str]]) -> list[str]:
    try:
        return providers()
    except ImportError:
        return []
