"""The one base class every handler subclasses; it owns TorchServe's lifecycle.

Lifecycle (TorchServe calls `initialize` once per worker, `handle` once per batch):

    initialize(context)
        options  <- the `handler:` section of the model-config, parsed into `Options`
        device   <- CUDA when TorchServe gave this worker a GPU and CUDA is present, else CPU
        load(model_dir)                         once per worker        (required hook)
    handle(requests, context)
        decode(payload) -> Decoded              per request, own try   (required hook)
        collate(instances of all good requests) one batch              (optional hook)
        predict(batch) -> Tensor [N, ...]       one forward pass       (required hook)
        encode(row) -> JSON value               per instance, own try  (optional hook)

N requests in, N responses out. A request that fails decoding or encoding gets its
own status (`context.set_response_status(code, phrase, idx)`) and a JSON body
naming the problem; the others carry on. Only a failure of the forward pass itself
touches the whole batch (500, or 507 when the device ran out of memory).
Subclasses never override `initialize` or `handle`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch
from ts.torch_handler.base_handler import BaseHandler

from handlers.errors import (
    HandlerContractError,
    InternalError,
    InvalidInput,
    OutOfResources,
    RequestError,
)
from handlers.options import NoOptions, parse_options
from handlers.payload import Payload

logger = logging.getLogger(__name__)

Instances = TypeVar("Instances", torch.Tensor, list)  # what decode gives per request


@dataclass(frozen=True)
class Decoded(Generic[Instances]):
    """The instances one request carries.

    `instances` is a tensor whose first dimension counts them, or a list of them.
    `single` means the request sent one instance without a list around it, so its
    answer is one object rather than a list of one.
    """

    instances: Instances
    single: bool

    def __post_init__(self) -> None:
        if len(self.instances) == 0:
            raise InvalidInput("request carries no instances: send at least one")


def pick_device(system_properties: dict[str, Any]) -> torch.device:
    """CUDA when TorchServe assigned this worker a GPU (`gpu_id`) and CUDA works, else CPU."""
    gpu_id = system_properties.get("gpu_id")
    if gpu_id is not None and torch.cuda.is_available():
        return torch.device(f"cuda:{int(gpu_id)}")
    return torch.device("cpu")


class ModelHandler(BaseHandler):
    """Base handler: subclasses implement `load`, `decode`, `predict` (and maybe `collate`, `encode`)."""

    Options: ClassVar[type] = NoOptions

    def __init__(self) -> None:
        super().__init__()
        self.options: Any = None
        self.device = torch.device("cpu")

    # ---- hooks -------------------------------------------------------------------
    def load(self, model_dir: Path) -> None:
        """Load weights from the extracted archive into this worker (required)."""
        raise NotImplementedError

    def decode(self, payload: Payload) -> Decoded:
        """Validate one request and turn it into instances; raise a RequestError if bad (required)."""
        raise NotImplementedError

    def collate(self, per_request: Sequence[Any]) -> Any:
        """Join the instances of all good requests into one batch on `self.device`."""
        if all(isinstance(item, torch.Tensor) for item in per_request):
            return torch.cat(list(per_request)).to(self.device, non_blocking=True)
        return [instance for item in per_request for instance in item]

    def predict(self, batch: Any) -> torch.Tensor:
        """One forward pass; returns one output row per instance (required)."""
        raise NotImplementedError

    def encode(self, row: torch.Tensor) -> Any:
        """Turn one instance's output row into a JSON value."""
        return row.tolist()

    # ---- TorchServe entry points -----------------------------------------------------
    def initialize(self, context: Any) -> None:
        """Parse options, pick the device and load the model, once per worker."""
        self.context = context
        model_config = getattr(context, "model_yaml_config", None) or {}
        self.options = parse_options(self.Options, model_config.get("handler"))
        self.device = pick_device(context.system_properties)
        self.load(Path(context.system_properties["model_dir"]))
        self.initialized = True
        logger.info("%s loaded on %s", type(self).__name__, self.device)

    def handle(self, data: list[Any], context: Any) -> list[Any]:
        """Answer a batch: one response (and one status) per request, in order."""
        responses: list[Any] = [None] * len(data)
        decoded: dict[int, Decoded] = {}
        for index, item in enumerate(data):
            try:
                decoded[index] = self.decode(Payload.from_torchserve(index, item, context))
            except Exception as error:  # noqa: BLE001 - converted to this request's status
                responses[index] = self._fail(context, index, error, stage="decode")
        if decoded:
            self._run_batch(decoded, responses, context)
        return responses

    # ---- internals ---------------------------------------------------------------
    def _run_batch(self, decoded: dict[int, Decoded], responses: list[Any], context: Any) -> None:
        counts = [len(item.instances) for item in decoded.values()]
        try:
            with torch.inference_mode():
                batch = self.collate([item.instances for item in decoded.values()])
                outputs = self.predict(batch).detach().cpu()
        except Exception as error:  # noqa: BLE001 - the forward pass fails every request in it
            failure = _batch_failure(error)
            for index in decoded:
                responses[index] = self._fail(context, index, failure, stage="predict")
            return
        if len(outputs) != sum(counts):
            bug = HandlerContractError(
                f"{type(self).__name__}.predict returned {len(outputs)} rows for "
                f"{sum(counts)} instances; return one output row per instance"
            )
            failure = _batch_failure(bug)
            for index in decoded:
                responses[index] = self._fail(context, index, failure, stage="predict")
            return
        for (index, item), rows in zip(decoded.items(), torch.split(outputs, counts), strict=True):
            try:
                encoded = [self.encode(row) for row in rows]
                body = encoded[0] if item.single else encoded
                responses[index] = self._succeed(context, index, body)
            except Exception as error:  # noqa: BLE001 - converted to this request's status
                responses[index] = self._fail(context, index, error, stage="encode")

    def _succeed(self, context: Any, index: int, body: Any) -> str:
        text = json.dumps(body, allow_nan=False)  # a NaN output fails this request, not the JSON
        context.set_response_content_type(index, "application/json")
        return text

    def _fail(self, context: Any, index: int, error: Exception, stage: str) -> str:
        """The one place an exception becomes a response: status, reason and a JSON body."""
        if not isinstance(error, RequestError):
            logger.exception("request %d: unexpected error in %s", index, stage, exc_info=error)
            error = InternalError(f"internal error while running {stage}; the server log has details")
        elif error.status < 500:
            logger.info("request %d rejected (%d): %s", index, error.status, error.message)
        context.set_response_status(error.status, error.reason, index)
        context.set_response_content_type(index, "application/json")
        return json.dumps(error.body())


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
