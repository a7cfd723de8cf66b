"""The options every handler shares: the request limit and the speed switches.

Every handler's `Options` subclasses `RuntimeOptions`, so these keys work in any
model YAML (docs/performance.md measures each speed switch):

    max_instances: 64       # instances one request may carry (413 beyond); each model sets its own

    backend: torch          # onnx: an ONNX Runtime session exported at archive time; auto: ONNX
                            # Runtime on a CPU worker, torch on a CUDA one (handlers/placement.py)
    onnx_file: model.onnx   # the export's name in the archive (int8: model.int8.onnx, see onnx_model_file)
    onnx_spinning: false    # ONNX Runtime's threads spin between runs: faster alone, CPU taken from the rest
    warmup: true            # forward passes at every batch size inside initialize(): READY means warm
    static_shapes: false    # pad batches to 1, 2, 4, ... (and text to length buckets); on with compile
    compile: false          # torch.compile (inductor), one graph per bucket, compiled during warm-up
    compile_mode: default   # reduce-overhead uses CUDA graphs on a GPU
    compile_cache_dir: ""   # inductor's cache (TORCHINDUCTOR_CACHE_DIR); restarts reuse compiled code
    quantize: none          # int8: dynamic int8 Linear layers (CPU), gated at archive time; either backend
    quantize_skip: []       # module-name patterns kept in float (the layers int8 hurts most)
    max_quantization_loss: 0.01   # the archive gate: accuracy points, or 1 - mean cosine
    mmap_weights: true      # weights mapped from the archive's file: workers share one copy
    threads: 0              # torch/ONNX Runtime threads; 0: this machine's cores / minWorkers
    precision: fp32         # fp16 / bf16: autocast around the forward pass
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from handlers.options import OptionsError, check_bounds, option

logger = logging.getLogger(__name__)
LENGTH_BUCKETS = (16, 32, 64, 128, 256, 512)  # token counts text is padded to with static shapes


@dataclass(frozen=True)
class RuntimeOptions:
    """How many instances a request may carry and how the forward pass runs; the base of every Options."""

    max_instances: int = option(64, low=1)
    backend: Literal["torch", "onnx", "auto"] = "torch"
    onnx_file: str = "model.onnx"  # written by the archive step when backend is onnx
    # ONNX Runtime's pool threads busy-wait after each run by default; on a small machine that takes CPU
    # from TorchServe's frontend and other workers (docs/performance.md measures it), so it is off.
    onnx_spinning: bool = False
    warmup: bool = True
    static_shapes: bool = False
    compile: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune",
                          "max-autotune-no-cudagraphs"] = "default"
    compile_cache_dir: str = ""
    quantize: Literal["none", "int8"] = "none"
    quantize_skip: tuple[str, ...] = ()
    max_quantization_loss: float = option(0.01, low=0, high=1)
    mmap_weights: bool = True
    threads: int = option(0, low=0)
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.backend == "onnx" and (self.compile or self.precision != "fp32"):
            raise OptionsError("backend", "compile and precision apply to the torch backend; with "
                                          "backend: onnx leave them at their defaults (quantize: int8 "
                                          "works with both)")
        if self.onnx_spinning and not self.exports_onnx:
            raise OptionsError("onnx_spinning", "only means something with backend: onnx or auto")
        if self.compile_cache_dir and not self.compile:
            raise OptionsError("compile_cache_dir", "only means something with compile: true")

    @property
    def exports_onnx(self) -> bool:
        """Whether the archive carries an ONNX export (auto runs it on CPU workers)."""
        return self.backend in ("onnx", "auto")

    @property
    def onnx_model_file(self) -> str:
        """The ONNX file the worker loads; the int8 one has its own name, so an archive says what it runs."""
        if self.quantize == "int8":
            return self.onnx_file.removesuffix(".onnx") + ".int8.onnx"
        return self.onnx_file

    @property
    def buckets(self) -> bool:
        """Whether batches (and texts) are padded to a few fixed shapes."""
        return self.static_shapes or self.compile


def batch_sizes(batch_size: int, buckets: bool) -> list[int]:
    """The batch sizes warmed before READY: powers of two up to batchSize, and batchSize itself.

    With buckets these are exactly the shapes the engine meets (the last bucket may pass
    batchSize), so each is warmed, compiled or not. An eager engine (torch, ONNX Runtime)
    meets every size from 1 to batchSize, but a new size costs it only allocator growth
    and kernel choice, which a few sizes cover: warming all of them made minilm's warm-up
    grow with batchSize (64 sizes x 5 lengths = 320 passes, 32 s on a GPU). make gpu-check
    and make coldstart measure the first request of a size against its median.
    """
    sizes = [1]
    while sizes[-1] < batch_size:
        sizes.append(sizes[-1] * 2)
    if not buckets:
        sizes[-1] = batch_size
    return sizes


def length_buckets(max_length: int) -> list[int]:
    """Token counts text is padded to with static shapes; the last is max_length itself."""
    return [length for length in LENGTH_BUCKETS if length < max_length] + [max_length]


def worker_threads(requested: int, model_config: Mapping[str, Any]) -> int:
    """`requested`, or this machine's cores shared by the model's minWorkers (at least one each)."""
    if requested:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // int(model_config.get("minWorkers", 1) or 1))


def set_worker_threads(threads: int) -> None:
    """Set torch's intra-op threads once per worker; inter-op stays as torch started it."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    logger.info("torch intra-op threads: %d", threads)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a host tensor to `device`; to a GPU through pinned memory, without waiting for the copy."""
    if device.type != "cuda" or tensor.device == device:
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype `precision` names; None for fp32 (no autocast)."""
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
