"""A worker's start: what `ModelHandler.initialize` does once, before TorchServe calls the model READY.

    options   <- the `handler:` section of the model-config, parsed into the handler's `Options`
    placement <- backend and device: CUDA when TorchServe gave the worker a gpu_id, else CPU (placement.py)
    threads; setup(model_dir); engine <- load_model(model_dir) as the options say (engines.py)
    warm-up:  every batch size x warmup_instances(), so READY means warm

This module sets the handler's attributes the hooks and the batch runner read; it sees the
handler through `Starting`, so it never imports the contract module.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, ClassVar, Protocol

from torch import nn

from handlers.batch import Hooks, forward_batch
from handlers.engines import Engine, build_engine
from handlers.errors import HandlerContractError
from handlers.metrics import HandlerMetrics, model_identity
from handlers.options import parse_options
from handlers.placement import Placement, place_engine
from handlers.runtime import RuntimeOptions, batch_sizes, set_worker_threads, worker_threads
from handlers.signature import Input, Signature

logger = logging.getLogger(__name__)


class Starting(Hooks, Protocol):
    """A handler as its start uses it: its declarations and load hooks, and the attributes set here."""

    Options: ClassVar[type[RuntimeOptions]]
    INPUT: ClassVar[Input]
    NETWORK_INPUTS: ClassVar[dict[str, tuple[int | str, ...]]]
    context: Any
    options: Any
    placement: Placement | None
    engine: Engine | None
    batch_sizes: list[int]
    initialized: bool

    def setup(self, model_dir: Path) -> None: ...

    def load_model(self, model_dir: Path) -> nn.Module: ...

    def warmup_instances(self) -> list[Any]: ...


def start_worker(handler: Starting, context: Any) -> None:
    """Parse options, pick the device, build the engine and warm it up, once per worker."""
    started = time.perf_counter()
    name = type(handler).__name__
    handler.context = context
    model_config = getattr(context, "model_yaml_config", None) or {}
    handler.options = options = parse_options(handler.Options, model_config.get("handler"))
    if not hasattr(handler, "INPUT"):
        raise HandlerContractError(f"{name} must declare INPUT = Input(...)")
    if not hasattr(handler, "NETWORK_INPUTS"):
        raise HandlerContractError(f"{name} must declare NETWORK_INPUTS = {{name: shape}}: its INPUT "
                                   "is not numbers, so the network's inputs cannot be read from it")
    handler.signature = Signature(handler.INPUT, handler.OUTPUTS, options.max_instances)
    handler.placement = placement = place_engine(options.backend, context.system_properties)
    if placement.warning:  # asked for the GPU, got the CPU: once per worker, loudly
        logger.warning("WARNING: %s", placement.warning)
    handler.device = placement.device  # ONNX Runtime takes host arrays and moves them itself
    handler.metrics = HandlerMetrics(context)
    handler.version = model_identity(context)[1]
    threads = worker_threads(options.threads, model_config)
    set_worker_threads(threads)
    model_dir = Path(context.system_properties["model_dir"])
    handler.setup(model_dir)
    batch_size = int(context.system_properties.get("batch_size") or 1)
    sizes = handler.batch_sizes = batch_sizes(batch_size, options.buckets)
    warmup = handler.warmup_instances()
    handler.engine = build_engine(options, placement.backend, placement.accelerator,
                                  lambda: handler.load_model(model_dir), model_dir, threads, sizes,
                                  shapes=len(sizes) * len(warmup))
    if options.warmup:
        warm_up(handler, warmup)
    handler.initialized = True
    handler.metrics.engine(placement.label)
    logger.info("%s ready in %.1fs: engine %s (backend: %s)", name, time.perf_counter() - started,
                placement.label, options.backend)


def warm_up(handler: Starting, instances: list[Any]) -> None:
    """Run the warm-up batch sizes (runtime.batch_sizes) with every instance shape, before READY.

    The first pass at a new shape pays for allocations, kernel selection and,
    with compile, compilation; paying here keeps it out of the first requests.
    """
    started = time.perf_counter()
    for number, instance in enumerate(instances, start=1):
        for size in handler.batch_sizes:
            forward_batch(handler, [instance] * size, size * len(instance))
        if number < len(instances):  # progress for `make serve`, which shows a model as warming
            logger.info("warm-up: input shape %d of %d done (%.1fs)", number, len(instances),
                        time.perf_counter() - started)
    logger.info("warm-up: batch sizes %s x %d input shapes in %.1fs", handler.batch_sizes,
                len(instances), time.perf_counter() - started)
