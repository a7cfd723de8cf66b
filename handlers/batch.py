"""One batch through a handler's hooks: N requests in, N responses out, each with its own status.

The runner behind `ModelHandler.handle` (handlers/base.py holds the contract an author reads):

    per request, own try:  its envelope parses it (envelopes.py) -> admit -> preprocess
    per batch:             collate -> inference -> one output row per instance
    per request, own try:  postprocess -> the envelope frames the named outputs

A request that fails preprocess or postprocess gets its own status
(`context.set_response_status(code, phrase, idx)`) and a JSON body naming the problem;
the others carry on. Only a failure of the forward pass itself touches the whole batch
(500, or 507 when the device ran out of memory). Every response carries the serving
version in `X-Model-Version`.

`read`, `instances_of`, `forward_batch` and `native_answers` run the same steps one at a
time, for gates, benchmarks and tests. This module sees a handler through `Hooks`, so it
never imports the contract module.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from handlers.envelopes import Envelope, open_envelope, serialize
from handlers.errors import (
    HandlerContractError,
    InternalError,
    InvalidInput,
    OutOfResources,
    RequestError,
    located,
)
from handlers.metrics import HandlerMetrics
from handlers.payload import Payload
from handlers.request import Instances, Parsed, join_instances
from handlers.signature import BatchOutputs, Output, OutputRows, Signature, check_outputs, per_instance
from handlers.validation import check_count

logger = logging.getLogger(__name__)
VERSION_HEADER = "X-Model-Version"  # which version answered; set on every response
_NATIVE = Envelope()  # stateless but for its parts: shared by every record not yet opened


class Hooks(Protocol):
    """A handler as the runner uses it: the contract's hooks, and what `initialize` set on it."""

    OUTPUTS: tuple[Output, ...]
    signature: Signature
    metrics: HandlerMetrics
    version: str
    device: torch.device

    @property
    def postprocesses_batches(self) -> bool: ...

    @property
    def answers_outputs_as_given(self) -> bool: ...

    def admit(self, parts: list[Instances]) -> list[Instances]: ...

    def preprocess(self, request: Instances) -> Any: ...

    def collate(self, per_request: Sequence[Any]) -> Any: ...

    def inference(self, batch: Any) -> torch.Tensor: ...

    def postprocess(self, rows: torch.Tensor) -> dict[str, Any]: ...

    def answer(self, outputs: dict[str, Any]) -> Any: ...


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


def answer_batch(handler: Hooks, data: list[Any], context: Any) -> list[Any]:
    """Answer a batch: one response (and one status) per request, in order."""
    metrics = handler.metrics
    metrics.in_flight(len(data))
    with metrics.stage("preprocess"):
        records = [_read(handler, index, item, context) for index, item in enumerate(data)]
    live = [record for record in records if record.body is None]
    instances = sum(record.count for record in live)
    if len(live) < len(records):  # a batch with rejections; every batch's sizes are in the metrics
        logger.info("batch: %d requests, %d rejected before inference, %d instances",
                    len(records), len(records) - len(live), instances)
    if live:
        metrics.batch(len(live), instances)
        _infer(handler, live, instances, context)
    metrics.outcomes(Counter(record.status for record in records),
                     Counter(record.error for record in records if record.error))
    metrics.in_flight(0)
    metrics.flush()
    for record in records:
        context.set_response_header(record.index, VERSION_HEADER, handler.version)
    return [record.body for record in records]


# ---- the same steps one at a time, for gates, benchmarks and tests ---------------------------
def read(handler: Hooks, envelope: Envelope) -> tuple[Parsed, Any]:
    """Parse one request in its envelope and preprocess it: its instances, or a RequestError."""
    parsed = envelope.parse(handler.signature)
    count = parsed.count()
    check_count(count, handler.signature.max_instances, "instances")
    pieces = []
    for part in handler.admit(parsed.parts):
        if not part.label:  # a body; a form field's errors name it
            pieces.append(handler.preprocess(part))
            continue
        with located(part.label):
            pieces.append(handler.preprocess(part))
    instances = pieces[0] if len(pieces) == 1 else join_instances(pieces)
    given = instances.shape[0] if isinstance(instances, torch.Tensor) else len(instances)  # len() is slow
    if given != count:
        raise HandlerContractError(f"{type(handler).__name__}.preprocess gave {given} instances "
                                   f"for {count} values; give one per value")
    return parsed, instances


def instances_of(handler: Hooks, body: Any, content_type: str = "application/json") -> Any:
    """One raw body read as `handle` reads a request: envelope, limits, preprocess."""
    return read(handler, open_envelope([Payload.of(0, "body", body, content_type, {})], None, 0))[1]


def native_answers(handler: Hooks, outputs: dict[str, Any], count: int) -> list[Any]:
    """Each instance's native JSON answer: its outputs as JSON values, through `answer`."""
    return [handler.answer(values) for values in per_instance(outputs, handler.OUTPUTS, count)]


def forward_batch(handler: Hooks, per_request: list[Any], expected_rows: int) -> torch.Tensor:
    """One collate and one inference for every instance; one output row each, on the CPU."""
    with torch.inference_mode():
        return _rows(handler, handler.collate(per_request), expected_rows)


# ---- internals ----------------------------------------------------------------------------
def _rows(handler: Hooks, batch: Any, expected_rows: int) -> torch.Tensor:
    """The collated batch through `inference`: one output row per instance, on the CPU."""
    rows = handler.inference(batch).detach().cpu()
    if len(rows) != expected_rows:
        raise HandlerContractError(
            f"{type(handler).__name__}.inference returned {len(rows)} rows for "
            f"{expected_rows} instances; return one output row per instance"
        )
    return rows


def _read(handler: Hooks, index: int, item: Any, context: Any) -> Record:
    record = Record(index)
    try:
        parts = Payload.parts_from_torchserve(index, item, context)
        record.envelope = open_envelope(parts, context, index)
        record.parsed, record.instances = read(handler, record.envelope)
        record.count = record.parsed.count()
    except Exception as error:  # noqa: BLE001 - converted to this request's status
        _fail(record, error, "preprocess", context)
    return record


def _infer(handler: Hooks, live: list[Record], instances: int, context: Any) -> None:
    """One forward pass for every live request, then each request's answer."""
    try:
        with torch.inference_mode():
            with handler.metrics.stage("collate"):
                batch = handler.collate([record.instances for record in live])
            with handler.metrics.stage("inference"):
                rows = _rows(handler, batch, instances)
    except Exception as error:  # noqa: BLE001 - the forward pass fails every request in it
        failure = _batch_failure(error)
        for record in live:
            _fail(record, failure, "inference", context)
        return
    handler.metrics.device_memory(handler.device)
    started, serializing = time.perf_counter(), 0.0
    finite = _finite_rows(rows).tolist()
    outputs = _postprocess_batch(handler, rows)
    end = 0
    for record in live:
        start, end = end, end + record.count
        ok = all(finite[start:end])
        if outputs is not None:
            serializing += _answer(handler, record, None, ok, context, outputs.rows(start, end))
        else:
            serializing += _answer(handler, record, rows[start:end], ok, context)
    handler.metrics.add_stage("postprocess", time.perf_counter() - started - serializing)
    handler.metrics.add_stage("serialize", serializing)


def _postprocess_batch(handler: Hooks, rows: torch.Tensor) -> BatchOutputs | None:
    """`postprocess` once for the whole batch when it reads each row on its own, else None.

    None also when it fails: each request then runs its own, so an error lands on
    the request whose rows cause it.
    """
    if not handler.postprocesses_batches:
        return None
    try:
        outputs = handler.postprocess(rows)
        check_outputs(outputs, handler.OUTPUTS, len(rows), f"{type(handler).__name__}.postprocess")
    except Exception:  # noqa: BLE001 - retried request by request, which reports it
        return None
    # The default `answer` hands the values on as they are: float rows may stay numpy rows.
    return BatchOutputs(outputs, handler.OUTPUTS, arrays=handler.answers_outputs_as_given)


def _answer(handler: Hooks, record: Record, rows: torch.Tensor | None, finite: bool, context: Any,
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
            produced = handler.postprocess(rows)
            check_outputs(produced, handler.OUTPUTS, record.count, f"{type(handler).__name__}.postprocess")
            outputs, answers = produced, native_answers(handler, produced, record.count) if wanted else []
        else:
            outputs, answers = given, [handler.answer(each) for each in given.instances()] if wanted else []
        assert record.parsed is not None
        body = record.envelope.frame(record.parsed, outputs, answers, handler.signature)
        started = time.perf_counter()
        record.body = serialize(body)  # a NaN fails this request, not the batch
        serializing = time.perf_counter() - started
        context.set_response_content_type(record.index, "application/json")
    except Exception as error:  # noqa: BLE001 - converted to this request's status
        _fail(record, error, "postprocess", context)
    return serializing


def _fail(record: Record, error: Exception, stage: str, context: Any) -> None:
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
