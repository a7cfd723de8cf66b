"""The one base class every handler subclasses; it owns TorchServe's lifecycle.

A model is one module with one `ModelHandler` subclass. Its author declares

    INPUT          = Input(...)          what one instance is, in every request shape
    OUTPUTS        = (Output(...), ...)  what the model answers per instance
    NETWORK_INPUTS = {"name": shape}     the network's inputs, per-instance shape (str: a variable axis)
    class Options(RuntimeOptions)        the `handler:` section of the model YAML

and writes the hooks (TorchServe's names; only the first two are required):

    load_model(model_dir) -> nn.Module         the float network on the CPU, weights loaded
    preprocess(instances) -> tensor | array | list   ONE request's instance values -> network inputs
    postprocess(rows) -> {output: values}      ONE request's output rows -> its named outputs
    answer(outputs) -> JSON                    one instance's native JSON answer (default: outputs)

Unlike stock BaseHandler, preprocess and postprocess see one request, not the batch.
Less common hooks: setup(model_dir) (a tokenizer), admit(parts) (a request's work budget),
collate(per_request) (joins the batch), inference(batch) (default: one engine pass),
warmup_instances(), example_batch(size).

Lifecycle (TorchServe calls `initialize` once per worker, `handle` once per batch):

    initialize(context)
        options <- `handler:` section; device <- CUDA when given a gpu_id, else CPU; threads
        setup(model_dir); engine <- load_model(model_dir) as the options say (engines.py)
        warm-up: every batch size x warmup_instances(), so READY means warm
    handle(requests, context)
        per request, own try:  its envelope parses it (envelopes.py) -> admit -> preprocess
        per batch:             collate -> inference -> one output row per instance
        per request, own try:  postprocess -> the envelope frames the named outputs

N requests in, N responses out. A request that fails preprocess or postprocess gets
its own status (`context.set_response_status(code, phrase, idx)`) and a JSON body
naming the problem; the others carry on. Only a failure of the forward pass itself
touches the whole batch (500, or 507 when the device ran out of memory). Every
response carries the serving version in `X-Model-Version`. Subclasses never
override `initialize` or `handle`.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from ts.torch_handler.base_handler import BaseHandler

from handlers.engines import Engine, build_engine
from handlers.envelopes import Envelope, open_envelope, serialize
from handlers.errors import (
    HandlerContractError,
    InternalError,
    InvalidInput,
    OutOfResources,
    RequestError,
    located,
)
from handlers.metrics import HandlerMetrics, model_identity
from handlers.options import parse_options
from handlers.payload import Payload
from handlers.placement import Placement, place_engine
from handlers.request import Instances, Parsed, join_instances
from handlers.runtime import RuntimeOptions, batch_sizes, set_worker_threads, to_device, worker_threads
from handlers.signature import (
    BatchOutputs,
    Input,
    Output,
    OutputRows,
    Signature,
    check_outputs,
    per_instance,
)
from handlers.validation import check_count

logger = logging.getLogger(__name__)
VERSION_HEADER = "X-Model-Version"  # which version answered; set on every response
_NATIVE = Envelope()  # stateless but for its parts: shared by every record not yet opened


@dataclass(slots=True)
class Record:
    """One request's way through a batch: its envelope, instances, status and body."""

    index: int
    envelope: Envelope = _NATIVE  # until its own is opened: frames an error that comes before
    parsed: Parsed | None = None
    instances: Any = None
    count: int = 0  # how many instances it carries
    status: int = 200
    error: str = ""  # the RequestError's type name, for the metrics
    body: str | None = None  # set once: the answer or the error


class ModelHandler(BaseHandler):
    """Base handler: subclasses declare INPUT and OUTPUTS and write `load_model` and `preprocess`."""

    Options: ClassVar[type[RuntimeOptions]] = RuntimeOptions
    INPUT: ClassVar[Input]
    OUTPUTS: ClassVar[tuple[Output, ...]] = (Output("output", "FP32"),)
    NETWORK_INPUTS: ClassVar[dict[str, tuple[int | str, ...]]] = {"input": ()}
    # postprocess reads each row on its own (argmax, a lookup): the base may run it once per batch
    # and hand each request its rows' share, which answers the same for less.
    POSTPROCESS_BY_ROW: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.options: Any = None
        self.device = torch.device("cpu")  # where collate puts the batch
        self.engine: Engine | None = None
        self.placement: Placement | None = None  # which engine runs where, once initialize() chose
        self.batch_sizes: list[int] = [1]
        self.metrics = HandlerMetrics(None)

    # ---- hooks -------------------------------------------------------------------
    def setup(self, model_dir: Path) -> None:
        """Load what preprocess needs besides the network, such as a tokenizer (optional)."""

    def load_model(self, model_dir: Path) -> nn.Module:
        """The float network on the CPU, weights loaded: network inputs -> one row per instance."""
        raise NotImplementedError

    def preprocess(self, request: Instances) -> torch.Tensor | np.ndarray | list[Any]:
        """One request's instance values -> one network input each (a tensor or array [n, ...], or a list).

        Raise a RequestError (InvalidInput, PayloadTooLarge, ...) naming `request.names[i]`
        when a value is bad: that request alone gets the error.
        """
        raise NotImplementedError

    def admit(self, parts: list[Instances]) -> list[Instances]:
        """Refuse a request whose work would outlast its batch's time, before any preprocess (optional).

        Sees every part of one request (a form has one per field), so a budget counts the
        whole request. Raise PayloadTooLarge naming the limit; leave bad values to preprocess,
        which names them. A batch over TorchServe's responseTimeout fails every request in it.
        Returns the parts preprocess sees: `parts`, or them with values admit already read
        (an image's opened header), so no work is done twice.
        """
        return parts

    def collate(self, per_request: Sequence[Any]) -> Any:
        """Join the instances of all good requests into one batch on `self.device` (numpy arrays
        become one tensor here, so a handler's preprocess need not make a tensor per request)."""
        joined = join_instances(per_request)
        if isinstance(joined, np.ndarray):
            joined = torch.from_numpy(joined)
        return to_device(joined, self.device) if isinstance(joined, torch.Tensor) else joined

    def inference(self, batch: Any) -> torch.Tensor:
        """One pass of the engine: the batch is a tensor or a tuple of the network's inputs."""
        assert self.engine is not None, "initialize() builds the engine"
        return self.engine(*batch) if isinstance(batch, tuple) else self.engine(batch)

    def postprocess(self, rows: torch.Tensor) -> dict[str, Any]:
        """One request's output rows -> each declared output: a tensor [n, ...] or n plain values."""
        (output,) = self.OUTPUTS  # the default fits a model with one output
        return {output.name: rows}

    def answer(self, outputs: dict[str, Any]) -> Any:
        """One instance's native JSON answer, from its named outputs (as JSON values)."""
        return outputs

    def warmup_instances(self) -> list[Any]:
        """One preprocessed instance per input shape the network will see (one zero row by default)."""
        (shape,) = self.NETWORK_INPUTS.values()  # override for several inputs or variable axes
        return [torch.zeros(1, *shape)]

    def example_batch(self, size: int) -> tuple[torch.Tensor, ...]:
        """The network's inputs for `size` instances (the ONNX export traces these)."""
        batch = self.collate([self.warmup_instances()[0]] * size)
        return (batch,) if isinstance(batch, torch.Tensor) else tuple(batch)

    # ---- TorchServe entry points -----------------------------------------------------
    def initialize(self, context: Any) -> None:
        """Parse options, pick the device, build the engine and warm it up, once per worker."""
        started = time.perf_counter()
        self.context = context
        model_config = getattr(context, "model_yaml_config", None) or {}
        self.options = parse_options(self.Options, model_config.get("handler"))
        if not hasattr(self, "INPUT"):
            raise HandlerContractError(f"{type(self).__name__} must declare INPUT = Input(...)")
        self.signature = Signature(self.INPUT, self.OUTPUTS, self.options.max_instances)
        self.placement = place_engine(self.options.backend, context.system_properties)
        if self.placement.warning:  # asked for the GPU, got the CPU: once per worker, loudly
            logger.warning("WARNING: %s", self.placement.warning)
        self.device = self.placement.device  # ONNX Runtime takes host arrays and moves them itself
        self.metrics = HandlerMetrics(context)
        self.version = model_identity(context)[1]
        threads = worker_threads(self.options.threads, model_config)
        set_worker_threads(threads)
        model_dir = Path(context.system_properties["model_dir"])
        self.setup(model_dir)
        batch_size = int(context.system_properties.get("batch_size") or 1)
        self.batch_sizes = batch_sizes(batch_size, self.options.buckets)
        warmup = self.warmup_instances()
        self.engine = build_engine(self.options, self.placement.backend, self.placement.accelerator,
                                   lambda: self.load_model(model_dir), model_dir, threads, self.batch_sizes,
                                   shapes=len(self.batch_sizes) * len(warmup))
        if self.options.warmup:
            self.warm_up(warmup)
        self.initialized = True
        self.metrics.engine(self.placement.label)
        logger.info("%s ready in %.1fs: engine %s (backend: %s)", type(self).__name__,
                    time.perf_counter() - started, self.placement.label, self.options.backend)

    def warm_up(self, instances: list[Any]) -> None:
        """Run the warm-up batch sizes (runtime.batch_sizes) with every instance shape, before READY.

        The first pass at a new shape pays for allocations, kernel selection and,
        with compile, compilation; paying here keeps it out of the first requests.
        """
        started = time.perf_counter()
        for number, instance in enumerate(instances, start=1):
            for size in self.batch_sizes:
                self.forward_batch([instance] * size, size * len(instance))
            if number < len(instances):  # progress for `make serve`, which shows a model as warming
                logger.info("warm-up: input shape %d of %d done (%.1fs)", number, len(instances),
                            time.perf_counter() - started)
        logger.info("warm-up: batch sizes %s x %d input shapes in %.1fs", self.batch_sizes,
                    len(instances), time.perf_counter() - started)

    def handle(self, data: list[Any], context: Any) -> list[Any]:
        """Answer a batch: one response (and one status) per request, in order."""
        self.metrics.in_flight(len(data))
        with self.metrics.stage("preprocess"):
            records = [self._read(index, item, context) for index, item in enumerate(data)]
        live = [record for record in records if record.body is None]
        instances = sum(record.count for record in live)
        if len(live) < len(records):  # a batch with rejections; every batch's sizes are in the metrics
            logger.info("batch: %d requests, %d rejected before inference, %d instances",
                        len(records), len(records) - len(live), instances)
        if live:
            self.metrics.batch(len(live), instances)
            self._infer(live, instances, context)
        self.metrics.outcomes(Counter(record.status for record in records),
                              Counter(record.error for record in records if record.error))
        self.metrics.in_flight(0)
        self.metrics.flush()
        for record in records:
            context.set_response_header(record.index, VERSION_HEADER, self.version)
        return [record.body for record in records]

    # ---- for gates, benchmarks and tests ------------------------------------------------
    def read(self, envelope: Envelope) -> tuple[Parsed, Any]:
        """Parse one request in its envelope and preprocess it: its instances, or a RequestError."""
        parsed = envelope.parse(self.signature)
        count = parsed.count()
        check_count(count, self.signature.max_instances, "instances")
        pieces = []
        for part in self.admit(parsed.parts):
            if not part.label:  # a body; a form field's errors name it
                pieces.append(self.preprocess(part))
                continue
            with located(part.label):
                pieces.append(self.preprocess(part))
        instances = pieces[0] if len(pieces) == 1 else join_instances(pieces)
        given = instances.shape[0] if isinstance(instances, torch.Tensor) else len(instances)  # len() is slow
        if given != count:
            raise HandlerContractError(f"{type(self).__name__}.preprocess gave {given} instances "
                                       f"for {count} values; give one per value")
        return parsed, instances

    def instances_of(self, body: Any, content_type: str = "application/json") -> Any:
        """One raw body read as `handle` reads a request: envelope, limits, preprocess."""
        return self.read(open_envelope([Payload.of(0, "body", body, content_type, {})], None, 0))[1]

    def native_answers(self, outputs: dict[str, Any], count: int) -> list[Any]:
        """Each instance's native JSON answer: its outputs as JSON values, through `answer`."""
        return [self.answer(values) for values in per_instance(outputs, self.OUTPUTS, count)]

    def forward_batch(self, per_request: list[Any], expected_rows: int) -> torch.Tensor:
        """One collate and one inference for every instance; one output row each, on the CPU."""
        with torch.inference_mode():
            return self._rows(self.collate(per_request), expected_rows)

    # ---- internals ---------------------------------------------------------------
    def _rows(self, batch: Any, expected_rows: int) -> torch.Tensor:
        """The collated batch through `inference`: one output row per instance, on the CPU."""
        rows = self.inference(batch).detach().cpu()
        if len(rows) != expected_rows:
            raise HandlerContractError(
                f"{type(self).__name__}.inference returned {len(rows)} rows for "
                f"{expected_rows} instances; return one output row per instance"
            )
        return rows

    def _read(self, index: int, item: Any, context: Any) -> Record:
        record = Record(index)
        try:
            parts = Payload.parts_from_torchserve(index, item, context)
            record.envelope = open_envelope(parts, context, index)
            record.parsed, record.instances = self.read(record.envelope)
            record.count = record.parsed.count()
        except Exception as error:  # noqa: BLE001 - converted to this request's status
            self._fail(record, error, "preprocess", context)
        return record

    def _infer(self, live: list[Record], instances: int, context: Any) -> None:
        """One forward pass for every live request, then each request's answer."""
        try:
            with torch.inference_mode():
                with self.metrics.stage("collate"):
                    batch = self.collate([record.instances for record in live])
                with self.metrics.stage("inference"):
                    rows = self._rows(batch, instances)
        except Exception as error:  # noqa: BLE001 - the forward pass fails every request in it
            failure = _batch_failure(error)
            for record in live:
                self._fail(record, failure, "inference", context)
            return
        self.metrics.device_memory(self.device)
        started, serializing = time.perf_counter(), 0.0
        finite = _finite_rows(rows).tolist()
        batch = self._postprocess_batch(rows)
        end = 0
        for record in live:
            start, end = end, end + record.count
            ok = all(finite[start:end])
            if batch is not None:
                serializing += self._answer(record, None, ok, context, batch.rows(start, end))
            else:
                serializing += self._answer(record, rows[start:end], ok, context)
        self.metrics.add_stage("postprocess", time.perf_counter() - started - serializing)
        self.metrics.add_stage("serialize", serializing)

    def _postprocess_batch(self, rows: torch.Tensor) -> BatchOutputs | None:
        """`postprocess` once for the whole batch when it reads each row on its own, else None.

        None also when it fails: each request then runs its own, so an error lands on
        the request whose rows cause it.
        """
        if not self.POSTPROCESS_BY_ROW and type(self).postprocess is not ModelHandler.postprocess:
            return None
        try:
            outputs = self.postprocess(rows)
            check_outputs(outputs, self.OUTPUTS, len(rows), f"{type(self).__name__}.postprocess")
        except Exception:  # noqa: BLE001 - retried request by request, which reports it
            return None
        # The default `answer` hands the values on as they are: float rows may stay numpy rows.
        return BatchOutputs(outputs, self.OUTPUTS, arrays=type(self).answer is ModelHandler.answer)

    def _answer(self, record: Record, rows: torch.Tensor | None, finite: bool, context: Any,
                given: OutputRows | None = None) -> float:
        """Postprocess one request's rows (or take `given`, its share of the batch's outputs) and
        frame them in its envelope, in its own try block.

        Returns the seconds serialising took: it is its own stage in the metrics.
        """
        serializing = 0.0
        try:
            if not finite:
                raise InvalidInput("the model's output for this input is not finite: its values "
                                   "are probably far outside the range the model was trained on")
            wanted = record.envelope.wants_answers
            outputs: Mapping[str, Any]
            if given is None:
                assert rows is not None
                produced = self.postprocess(rows)
                check_outputs(produced, self.OUTPUTS, record.count, f"{type(self).__name__}.postprocess")
                outputs, answers = produced, self.native_answers(produced, record.count) if wanted else []
            else:
                outputs, answers = given, [self.answer(each) for each in given.instances()] if wanted else []
            assert record.parsed is not None
            body = record.envelope.frame(record.parsed, outputs, answers, self.signature)
            started = time.perf_counter()
            record.body = serialize(body)  # a NaN fails this request, not the batch
            serializing = time.perf_counter() - started
            context.set_response_content_type(record.index, "application/json")
        except Exception as error:  # noqa: BLE001 - converted to this request's status
            self._fail(record, error, "postprocess", context)
        return serializing

    def _fail(self, record: Record, error: Exception, stage: str, context: Any) -> None:
        """The one place an exception becomes a response: status, reason and a JSON body."""
        if not isinstance(error, RequestError):
            logger.exception("request %d: unexpected error in %s", record.index, stage, exc_info=error)
            error = InternalError(f"internal error while running {stage}; the server log has details")
        elif error.status < 500:
            logger.info("request %d rejected (%d): %s", record.index, error.status, error.message)
        record.status, record.error = error.status, type(error).__name__
        context.set_response_status(error.status, error.reason, record.index)
        context.set_response_content_type(record.index, "application/json")
        record.body = json.dumps(record.envelope.error_body(error))


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
