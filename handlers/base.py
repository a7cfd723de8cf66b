"""The one base class every handler subclasses; it owns TorchServe's lifecycle.

Lifecycle (TorchServe calls `initialize` once per worker, `handle` once per batch):

    initialize(context)
        options  <- the `handler:` section of the model-config, parsed into `Options`
                    (every handler's Options extends RuntimeOptions: backend, compile, ...)
        device   <- CUDA when TorchServe gave this worker a GPU and CUDA is present, else CPU
        threads  <- `threads`, or the machine's cores / minWorkers
        load(model_dir)                         tokenizer and the like    (optional hook)
        engine   <- network(model_dir) as the options say: eager, int8, compiled,
                    or the archive's ONNX export (see engines.py)          (required hook)
        warm-up  <- forward passes at every batch size (and input shape) the worker will
                    see, from warmup_instances(): READY means warm        (required hook)
    handle(requests, context)
        per request, own try: pick its envelope (native, KServe v1, OIP; see envelopes.py)
            native body      -> decode(payload) -> Decoded            (required hook)
            v1/OIP instances -> decode_instances(values) -> instances (required hook)
        collate(instances of all good requests) one batch              (optional hook)
        predict(batch) -> Tensor [N, ...]       one pass of the engine (required hook)
        per request, own try: frame the answer in its envelope
            native, v1 -> encode(row) per instance                     (optional hook)
            OIP        -> encode_outputs(rows) -> [OutputTensor]       (optional hook)

Every response, good or bad, carries the serving version in an `X-Model-Version`
header, so clients (and the rollout tests) see which version answered.

N requests in, N responses out. A request that fails decoding or encoding gets its
own status (`context.set_response_status(code, phrase, idx)`) and a JSON body
naming the problem; the others carry on. Only a failure of the forward pass itself
touches the whole batch (500, or 507 when the device ran out of memory).
Subclasses never override `initialize` or `handle`.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from ts.torch_handler.base_handler import BaseHandler

from handlers.decoded import Decoded, join_instances
from handlers.engines import Engine, build_engine
from handlers.envelopes import Envelope, open_envelope
from handlers.errors import (
    HandlerContractError,
    InternalError,
    InvalidInput,
    OutOfResources,
    RequestError,
)
from handlers.metrics import HandlerMetrics, model_identity
from handlers.options import parse_options
from handlers.payload import Payload
from handlers.runtime import RuntimeOptions, batch_sizes, set_worker_threads, to_device, worker_threads
from handlers.tensors import OutputTensor, TensorSpec

__all__ = ["Decoded", "ModelHandler", "pick_device"]
logger = logging.getLogger(__name__)
VERSION_HEADER = "X-Model-Version"  # which version answered; set on every response
Opened = dict[int, tuple[Envelope, Decoded]]  # request index -> its envelope and decoded instances

def pick_device(system_properties: dict[str, Any]) -> torch.device:
    """CUDA when TorchServe assigned this worker a GPU (`gpu_id`) and CUDA works, else CPU."""
    gpu_id = system_properties.get("gpu_id")
    if gpu_id is not None and torch.cuda.is_available():
        return torch.device(f"cuda:{int(gpu_id)}")
    return torch.device("cpu")


class ModelHandler(BaseHandler):
    """Base handler: subclasses implement `network`, `warmup_instances`, `decode`, `predict`, ..."""

    Options: ClassVar[type] = RuntimeOptions
    INPUT: ClassVar[TensorSpec | None] = None  # the OIP input tensor; None: no OIP requests
    OUTPUTS: ClassVar[tuple[str, ...]] = ("output",)  # the OIP output names encode_outputs gives
    # The network's inputs, in order, with their variable axes (for the ONNX export).
    NETWORK_INPUTS: ClassVar[dict[str, tuple[str, ...]]] = {"input": ("batch",)}

    def __init__(self) -> None:
        super().__init__()
        self.options: Any = None
        self.device = torch.device("cpu")  # where collate puts the batch
        self.engine: Engine | None = None
        self.batch_sizes: list[int] = [1]
        self.metrics = HandlerMetrics(None)
        self._statuses: Counter[int] = Counter()  # this batch's outcomes, for the metrics
        self._errors: Counter[str] = Counter()

    # ---- hooks -------------------------------------------------------------------
    def load(self, model_dir: Path) -> None:
        """Load what decoding needs besides the network, such as a tokenizer (optional)."""

    def network(self, model_dir: Path) -> nn.Module:
        """The float network on the CPU, weights loaded: input tensors -> one row per instance."""
        raise NotImplementedError

    def warmup_instances(self) -> list[Any]:
        """One decoded instance per input shape family (one per text length bucket, ...) (required)."""
        raise NotImplementedError

    def example_batch(self, size: int) -> tuple[torch.Tensor, ...]:
        """The network's inputs for `size` instances (the ONNX export traces these)."""
        batch = self.collate([self.warmup_instances()[0]] * size)
        return (batch,) if isinstance(batch, torch.Tensor) else tuple(batch)

    def decode(self, payload: Payload) -> Decoded:
        """Validate one request and turn it into instances; raise a RequestError if bad (required)."""
        raise NotImplementedError

    def decode_instances(self, values: list[Any], where: str) -> torch.Tensor | list[Any]:
        """Instances from JSON values (KServe v1 `instances`, rows of an OIP tensor); raise if bad."""
        raise InvalidInput("this model reads only its own request format, not KServe v1 or OIP")

    def collate(self, per_request: Sequence[Any]) -> Any:
        """Join the instances of all good requests into one batch on `self.device`."""
        joined = join_instances(per_request)
        return to_device(joined, self.device) if isinstance(joined, torch.Tensor) else joined

    def predict(self, batch: Any) -> torch.Tensor:
        """One forward pass through `self.engine`; one output row per instance (required)."""
        raise NotImplementedError

    def encode(self, row: torch.Tensor) -> Any:
        """Turn one instance's output row into a JSON value."""
        return row.tolist()

    def encode_outputs(self, rows: torch.Tensor) -> list[OutputTensor]:
        """The OIP output tensors for one request's output rows."""
        return [OutputTensor.of("output", "FP32", rows)]

    @property
    def max_instances(self) -> int | None:
        """The per-request instance limit, from the `max_instances` option when there is one."""
        return getattr(self.options, "max_instances", None)

    # ---- TorchServe entry points -----------------------------------------------------
    def initialize(self, context: Any) -> None:
        """Parse options, pick the device, build the engine and warm it up, once per worker."""
        started = time.perf_counter()
        self.context = context
        model_config = getattr(context, "model_yaml_config", None) or {}
        self.options = parse_options(self.Options, model_config.get("handler"))
        accelerator = pick_device(context.system_properties)
        # ONNX Runtime takes host arrays and moves them to its device itself.
        self.device = torch.device("cpu") if self.options.backend == "onnx" else accelerator
        self.metrics = HandlerMetrics(context)
        self.version = model_identity(context)[1]
        threads = worker_threads(self.options.threads, model_config)
        set_worker_threads(threads)
        model_dir = Path(context.system_properties["model_dir"])
        self.load(model_dir)
        batch_size = int(context.system_properties.get("batch_size") or 1)
        self.batch_sizes = batch_sizes(batch_size, self.options.buckets)
        warmup = self.warmup_instances()
        self.engine = build_engine(self.options, accelerator, lambda: self.network(model_dir), model_dir,
                                   threads, self.batch_sizes, shapes=len(self.batch_sizes) * len(warmup))
        if self.options.warmup:
            self.warm_up(warmup)
        self.initialized = True
        logger.info("%s ready on %s (backend %s) in %.1fs", type(self).__name__, accelerator,
                    self.options.backend, time.perf_counter() - started)

    def warm_up(self, instances: list[Any]) -> None:
        """Run every batch size this worker will see with every instance shape, before READY.

        The first pass at a new shape pays for allocations, kernel selection and,
        with compile, compilation; paying here keeps it out of the first requests.
        """
        started = time.perf_counter()
        for instance in instances:
            for size in self.batch_sizes:
                self.forward_batch([instance] * size, size * len(instance))
        logger.info("warm-up: batch sizes %s x %d input shapes in %.1fs", self.batch_sizes,
                    len(instances), time.perf_counter() - started)

    def handle(self, data: list[Any], context: Any) -> list[Any]:
        """Answer a batch: one response (and one status) per request, in order."""
        responses: list[Any] = [None] * len(data)
        self._statuses, self._errors = Counter(), Counter()
        with self.metrics.stage("decode"):
            opened = self._open_all(data, responses, context)
        instances = sum(len(decoded.instances) for _, decoded in opened.values())
        if len(opened) < len(data):  # a batch with rejections; every batch's sizes are in the metrics
            logger.info("batch: %d requests, %d rejected before inference, %d instances",
                        len(data), len(data) - len(opened), instances)
        if opened:
            self.metrics.batch(len(opened), instances)
            self._run_batch(opened, responses, context)
        self.metrics.outcomes(self._statuses, self._errors)
        self.metrics.flush()
        for index in range(len(data)):
            context.set_response_header(index, VERSION_HEADER, self.version)
        return responses

    # ---- internals ---------------------------------------------------------------
    def _open_all(self, data: list[Any], responses: list[Any], context: Any) -> Opened:
        """Decode every request in its own try block; failures get their response right away."""
        opened: Opened = {}
        for index, item in enumerate(data):
            envelope = Envelope()
            try:
                envelope = open_envelope(Payload.parts_from_torchserve(index, item, context), context, index)
                opened[index] = (envelope, envelope.decode(self))
            except Exception as error:  # noqa: BLE001 - converted to this request's status
                responses[index] = self._fail(context, index, error, "decode", envelope)
        return opened

    def _run_batch(self, opened: Opened, responses: list[Any], context: Any) -> None:
        """One forward pass for every opened request, then each request's answer."""
        counts = [len(decoded.instances) for _, decoded in opened.values()]
        try:
            with self.metrics.stage("inference"):
                outputs = self.forward_batch([decoded.instances for _, decoded in opened.values()],
                                             sum(counts))
        except Exception as error:  # noqa: BLE001 - the forward pass fails every request in it
            failure = _batch_failure(error)
            for index, (envelope, _) in opened.items():
                responses[index] = self._fail(context, index, failure, "predict", envelope)
            return
        self.metrics.device_memory(self.device)
        with self.metrics.stage("encode"):
            finite = _finite_rows(outputs).tolist()
            per_request_finite = [all(finite[end - count:end]) for count, end in
                                  zip(counts, itertools.accumulate(counts), strict=True)]
            self._answer_all(opened, torch.split(outputs, counts), per_request_finite, responses, context)

    def _answer_all(self, opened: Opened, per_request: Sequence[torch.Tensor], finite: Sequence[bool],
                    responses: list[Any], context: Any) -> None:
        """Frame each request's output rows in its envelope, each in its own try block."""
        for (index, (envelope, decoded)), rows, rows_finite in zip(opened.items(), per_request, finite,
                                                                    strict=True):
            try:
                if not rows_finite:
                    raise InvalidInput("the model's output for this input is not finite: its values "
                                       "are probably far outside the range the model was trained on")
                body = envelope.answer(self, rows, decoded.single)
                responses[index] = self._succeed(context, index, body)
            except Exception as error:  # noqa: BLE001 - converted to this request's status
                responses[index] = self._fail(context, index, error, "encode", envelope)

    def forward_batch(self, per_request: list[Any], expected_rows: int) -> torch.Tensor:
        """One collate and one forward pass for every instance; one output row each, on the CPU."""
        with torch.inference_mode():
            outputs = self.predict(self.collate(per_request)).detach().cpu()
        if len(outputs) != expected_rows:
            raise HandlerContractError(
                f"{type(self).__name__}.predict returned {len(outputs)} rows for "
                f"{expected_rows} instances; return one output row per instance"
            )
        return outputs

    def _succeed(self, context: Any, index: int, body: Any) -> str:
        text = json.dumps(body, allow_nan=False)  # a NaN output fails this request, not the JSON
        context.set_response_content_type(index, "application/json")
        self._statuses[200] += 1
        return text

    def _fail(self, context: Any, index: int, error: Exception, stage: str, envelope: Envelope) -> str:
        """The one place an exception becomes a response: status, reason and a JSON body."""
        if not isinstance(error, RequestError):
            logger.exception("request %d: unexpected error in %s", index, stage, exc_info=error)
            error = InternalError(f"internal error while running {stage}; the server log has details")
        elif error.status < 500:
            logger.info("request %d rejected (%d): %s", index, error.status, error.message)
        context.set_response_status(error.status, error.reason, index)
        context.set_response_content_type(index, "application/json")
        self._statuses[error.status] += 1
        self._errors[type(error).__name__] += 1
        return json.dumps(envelope.error_body(error))


def _finite_rows(outputs: torch.Tensor) -> torch.Tensor:
    """Which output rows hold only finite values, computed once for the whole batch."""
    if not outputs.is_floating_point():
        return torch.ones(len(outputs), dtype=torch.bool)
    return torch.isfinite(outputs.reshape(len(outputs), -1)).all(dim=1)


def _batch_failure(error: Exception) -> RequestError:
    """Map a forward-pass exception to the status every request in that pass gets."""
    if isinstance(error, RequestError):
        return error
    out_of_memory = isinstance(error, (MemoryError, torch.OutOfMemoryError)) or (
        "out of memory" in str(error).lower()
    )
    logger.error("forward pass failed for the whole batch", exc_info=error)
    if out_of_memory:
        return OutOfResources("the device ran out of memory for this batch; retry with fewer instances")
    return InternalError("the model failed on this batch; the server log has details")
