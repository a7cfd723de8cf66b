"""The three request shapes every handler speaks, chosen per request from the body.

- native:      the model's own JSON or raw body (image bytes, plain text), or
               several form fields, each read as a native body;
- KServe v1:   {"instances": [...]}                      -> {"predictions": [...]}
- OIP (v2):    {"inputs": [{"name", "shape", "datatype", "data"}], "id"?,
               "parameters"?, "outputs"?}               -> {"model_name", "model_version",
                                                            "id", "outputs": [...]}

TorchServe hands all routes (`/predictions/NAME`, `/v1/models/NAME:predict`,
`/v2/models/NAME/infer`) the raw body and no URL, so the body decides. Requests
in one batch may use different shapes: each envelope decodes its own request
into instances for the shared forward pass and frames its own answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from handlers.decoded import Decoded, join_instances
from handlers.errors import HandlerContractError, InvalidInput, RequestError
from handlers.metrics import model_identity
from handlers.payload import Payload
from handlers.tensors import brief, instance_values
from handlers.validation import JSON_TYPES, check_count

# Sent by OIP clients that use the binary tensor data extension (tritonclient's default).
_BINARY_HEADER = "Inference-Header-Content-Length"

if TYPE_CHECKING:
    from handlers.base import ModelHandler

_OIP_KEYS = frozenset({"id", "parameters", "inputs", "outputs"})


class Envelope:
    """Native framing: the handler decodes the body and each instance is answered by `encode`."""

    def __init__(self, parts: Sequence[Payload] = ()) -> None:
        self.parts = list(parts)

    def decode(self, handler: ModelHandler) -> Decoded:
        if len(self.parts) == 1:
            return handler.decode(self.parts[0])
        return _join_form_fields(handler, self.parts)

    def answer(self, handler: ModelHandler, rows: torch.Tensor, single: bool) -> Any:
        encoded = [handler.encode(row) for row in rows]
        return encoded[0] if single else encoded

    def error_body(self, error: RequestError) -> dict[str, Any]:
        return error.body()


class KServeV1(Envelope):
    """{"instances": [...]} in, {"predictions": [...]} out, one prediction per instance."""

    def __init__(self, document: dict[str, Any]) -> None:
        super().__init__()
        self.document = document

    def decode(self, handler: ModelHandler) -> Decoded:
        instances = self.document["instances"]
        if not isinstance(instances, list) or not instances:
            raise InvalidInput("'instances' must be a non-empty list of instances")
        check_count(len(instances), handler.max_instances, "instances")
        return Decoded(handler.decode_instances(instances, "instances"), single=False)

    def answer(self, handler: ModelHandler, rows: torch.Tensor, single: bool) -> Any:
        return {"predictions": [handler.encode(row) for row in rows]}


class OpenInference(Envelope):
    """An Open Inference Protocol (KServe v2) request; errors are {"error": "..."} as the spec says."""

    def __init__(self, document: dict[str, Any] | None, context: Any, index: int) -> None:
        super().__init__()
        self.document = document  # None: a binary-extension request, which we do not read
        self.model_name, self.model_version = model_identity(context)
        self.request_id = _request_id(document, context, index)
        self.wanted_outputs: list[str] = []

    def decode(self, handler: ModelHandler) -> Decoded:
        document = self.document
        if document is None:
            raise InvalidInput("the OIP binary tensor data extension is not supported; send the "
                               "tensors as JSON (tritonclient: binary_data=False)")
        unknown = sorted(set(document) - _OIP_KEYS)
        if unknown:
            raise InvalidInput(f"unknown keys {brief(unknown)}; an OIP request has {sorted(_OIP_KEYS)}")
        if not isinstance(document.get("id", ""), str):
            raise InvalidInput("'id' must be a string")
        if not isinstance(document.get("parameters", {}), dict):
            raise InvalidInput("'parameters' must be an object")
        self.wanted_outputs = _wanted_outputs(document.get("outputs", []), handler.OUTPUTS)
        inputs = document["inputs"]
        if handler.INPUT is None:
            raise InvalidInput("this model does not take Open Inference Protocol requests")
        if not isinstance(inputs, list) or len(inputs) != 1:
            raise InvalidInput(
                f"'inputs' must be a list of exactly one tensor (this model's input "
                f"'{handler.INPUT.name}', shape {handler.INPUT.expected_shape()})"
            )
        values = instance_values(inputs[0], handler.INPUT, "inputs[0]")
        check_count(len(values), handler.max_instances, "instances")
        return Decoded(handler.decode_instances(values, "inputs[0]"), single=False)

    def answer(self, handler: ModelHandler, rows: torch.Tensor, single: bool) -> Any:
        outputs = {tensor.name: tensor for tensor in handler.encode_outputs(rows)}
        if list(outputs) != list(handler.OUTPUTS):
            raise HandlerContractError(
                f"{type(handler).__name__}.encode_outputs gave {list(outputs)}, "
                f"but its OUTPUTS are {handler.OUTPUTS}"
            )
        chosen = [outputs[name] for name in self.wanted_outputs] or list(outputs.values())
        return {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "id": self.request_id,
            "outputs": [tensor.to_json() for tensor in chosen],
        }

    def error_body(self, error: RequestError) -> dict[str, Any]:
        return {"error": error.message}


def open_envelope(parts: Sequence[Payload], context: Any, index: int) -> Envelope:
    """Pick the request's framing from its body; forms and anything not v1 or OIP are native."""
    if len(parts) != 1 or parts[0].field != "body":
        return Envelope(parts)
    if parts[0].header(_BINARY_HEADER) is not None:
        return OpenInference(None, context, index)
    if parts[0].content_type not in JSON_TYPES:
        return Envelope(parts)
    try:
        document = parts[0].json()
    except RequestError:
        return Envelope(parts)  # not JSON: the handler reads it (an image, text) or says why not
    if isinstance(document, dict) and "inputs" in document:  # with "instances" too: OIP says no
        return OpenInference(document, context, index)
    if isinstance(document, dict) and "instances" in document:
        return KServeV1(document)
    return Envelope([parts[0].with_document(document)])


def _join_form_fields(handler: ModelHandler, parts: Sequence[Payload]) -> Decoded:
    """Each form field is a native body; their instances are joined in the order sent."""
    pieces = []
    for part in parts:
        try:
            pieces.append(handler.decode(part).instances)
        except RequestError as error:
            raise type(error)(f"form field '{part.field}': {error.message}") from None
    joined = join_instances(pieces)
    check_count(len(joined), handler.max_instances, "instances")
    return Decoded(joined, single=False)


def _wanted_outputs(outputs: Any, available: Sequence[str]) -> list[str]:
    """The requested output names, checked before the forward pass is spent on them."""
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        raise InvalidInput("'outputs' must be a list of objects with a 'name'")
    names = [output["name"] for output in outputs]
    unknown = [name for name in names if name not in available]
    if unknown:
        raise InvalidInput(
            f"requested outputs {brief(unknown)} do not exist; this model has {list(available)}"
        )
    if len(set(names)) != len(names):
        raise InvalidInput("'outputs' names an output more than once")
    return names


def _request_id(document: dict[str, Any] | None, context: Any, index: int) -> str:
    """The client's `id` when it sent one (echoed, as OIP requires), else TorchServe's request id."""
    given = (document or {}).get("id")
    if isinstance(given, str):
        return given
    try:
        return str(context.get_request_id(index))
    except (AttributeError, KeyError, TypeError):
        return ""
