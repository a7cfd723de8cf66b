"""The three request shapes every model speaks, chosen per request from the body.

- native:      `{"<input>": one instance or a list}`, a raw body of one of the
               input's `raw_types` (image bytes, plain text), or a multipart form
               whose fields are each read as a native body;
- KServe v1:   {"instances": [...]}                      -> {"predictions": [...]}
- OIP (v2):    {"inputs": [{"name", "shape", "datatype", "data"}], "id"?,
               "parameters"?, "outputs"?}               -> {"model_name", "model_version",
                                                            "id", "outputs": [...]}

TorchServe hands all routes (`/predictions/NAME`, `/v1/models/NAME:predict`,
`/v2/models/NAME/infer`) the raw body and no URL, so the body decides. This is
pure protocol: an envelope reads a request into `Parsed` against the model's
`Signature` and frames named outputs back; it never calls the handler.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from handlers.errors import InvalidInput, RequestError, UnsupportedMediaType, brief
from handlers.metrics import model_identity
from handlers.payload import Payload
from handlers.request import Instances, Parsed
from handlers.signature import JSON_TYPES, Input, Signature
from handlers.tensors import OutputTensor, instance_values

# Sent by OIP clients that use the binary tensor data extension (tritonclient's default).
_BINARY_HEADER = "inference-header-content-length"
_OIP_KEYS = frozenset({"id", "parameters", "inputs", "outputs"})
# Types orjson would write but json.dumps refuses: refused here too (a 500 names the hook).
# Numpy arrays are written (json_columns' float64 rows, as their lists would be); a tensor is refused.
_ORJSON_STRICT = (orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
                  | orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_SERIALIZE_NUMPY)


class Envelope:
    """Native framing: the model's own body in, one answer (or a list of them) out."""

    wants_answers = True  # frame() needs each instance's native JSON answer

    def __init__(self, parts: Sequence[Payload] = ()) -> None:
        self.parts = list(parts)

    def parse(self, signature: Signature) -> Parsed:
        if len(self.parts) == 1:
            return Parsed([read_native(self.parts[0], signature.input)])
        return Parsed([read_native(part, signature.input, label=f"form field '{part.field}'")
                       for part in self.parts])

    def frame(self, parsed: Parsed, outputs: Mapping[str, Any], answers: list[Any],
              signature: Signature) -> Any:
        return answers[0] if parsed.single else answers

    def error_body(self, error: RequestError) -> dict[str, Any]:
        return error.body()


class KServeV1(Envelope):
    """{"instances": [...]} in, {"predictions": [...]} out, one prediction per instance."""

    def __init__(self, document: dict[str, Any]) -> None:
        super().__init__()
        self.document = document

    def parse(self, signature: Signature) -> Parsed:
        instances = self.document["instances"]
        if not isinstance(instances, list) or not instances:
            raise InvalidInput("'instances' must be a non-empty list of instances")
        names = [f"instances[{number}]" for number in range(len(instances))]
        values = [_unwrap(value, name, signature.input) for value, name in zip(instances, names, strict=True)]
        return Parsed([Instances(values, names)])

    def frame(self, parsed: Parsed, outputs: Mapping[str, Any], answers: list[Any],
              signature: Signature) -> Any:
        return {"predictions": answers}


class OpenInference(Envelope):
    """An Open Inference Protocol (KServe v2) request; errors are {"error": "..."} as the spec says."""

    wants_answers = False

    def __init__(self, document: dict[str, Any] | None, context: Any, index: int) -> None:
        super().__init__()
        self.document = document  # None: a binary-extension request, which we do not read
        self.model_name, self.model_version = model_identity(context)
        self.request_id = _request_id(document, context, index)

    def parse(self, signature: Signature) -> Parsed:
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
        wanted = _wanted_outputs(document.get("outputs", []), signature.output_names())
        spec, inputs = signature.input, document["inputs"]
        if not isinstance(inputs, list) or len(inputs) != 1:
            raise InvalidInput(f"'inputs' must be a list of exactly one tensor (this model's input "
                               f"'{spec.name}', shape {spec.expected_shape()})")
        values = instance_values(inputs[0], spec, "inputs[0]")
        return Parsed([Instances(values, [f"inputs[0][{number}]" for number in range(len(values))])],
                      outputs=tuple(wanted))

    def frame(self, parsed: Parsed, outputs: Mapping[str, Any], answers: list[Any],
              signature: Signature) -> Any:
        specs = {spec.name: spec for spec in signature.outputs}
        names = parsed.outputs or tuple(specs)  # as asked for, else all in declared order
        return {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "id": self.request_id,
            "outputs": [OutputTensor.of(specs[name], outputs[name]).to_json() for name in names],
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
        return Envelope(parts)  # not JSON: maybe a raw body (an image, text), or a 400 on reading
    if isinstance(document, dict) and "inputs" in document:  # with "instances" too: OIP says no
        return OpenInference(document, context, index)
    if isinstance(document, dict) and "instances" in document:
        return KServeV1(document)
    return Envelope(parts if parts[0].parsed else [parts[0].with_document(document)])


def serialize(body: Any) -> str:
    """A framed answer as JSON text, as `json.dumps(body, allow_nan=False)` reads back, only faster.

    orjson writes each float as the shortest text that reads back as the same float64
    (json.dumps' 17 digits take ten times as long; an embedding is 384 of them). Where the two
    could differ json.dumps writes it: orjson refuses (a non-str key, an integer beyond 64 bits,
    a lone surrogate), or its text holds `null`, which is how orjson writes NaN and infinity,
    which json.dumps refuses, so a NaN still fails its request. A float64 numpy row (an
    embedding, `signature.json_columns`) is written as its list of floats would be.
    """
    try:
        text = orjson.dumps(body, option=_ORJSON_STRICT)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(body, allow_nan=False, default=_plain)
    return json.dumps(body, allow_nan=False, default=_plain) if b"null" in text else text.decode()


def _plain(value: Any) -> Any:
    """A float64 numpy row as json.dumps can write it; anything else json.dumps refuses, refused."""
    if isinstance(value, np.ndarray) and value.dtype == np.float64:
        return value.tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def read_native(payload: Payload, spec: Input, label: str = "") -> Instances:
    """A native body: JSON `{"<input>": one instance or a list}`, or a raw body as one instance."""
    content_type = payload.content_type
    if not payload.parsed and content_type in spec.raw_types:
        value = payload.text() if content_type.startswith("text/") else payload.raw_bytes()
        return Instances([value], ["body"], single=True, raw=True, label=label)
    if not payload.parsed and content_type not in JSON_TYPES:
        raise UnsupportedMediaType(
            f"content type '{content_type}' is not supported; send {spec.media_types()}")
    document = payload.json()
    if not isinstance(document, dict) or spec.name not in document:
        raise InvalidInput(f"expected a JSON object {spec.json_example()}")
    value = document[spec.name]
    if _depth(value) <= spec.rank():
        return Instances([value], [spec.name], single=True, label=label)
    if not value:
        raise InvalidInput(f"'{spec.name}' is an empty list; send at least one instance")
    return Instances(list(value), [f"{spec.name}[{n}]" for n in range(len(value))], label=label)


def _depth(value: Any) -> int:
    """How deeply `value` nests lists, following first items: 0 for a scalar, 1 for [1, 2], ..."""
    depth = 0
    while isinstance(value, list):
        depth += 1
        value = value[0] if value else None
    return depth


def _unwrap(value: Any, where: str, spec: Input) -> Any:
    """A v1 instance as sent, or wrapped in its input's name: [30 numbers] or {"features": [...]}.

    A BYTES input also passes {"b64": ...} through: v1's way of sending binary data.
    """
    if not isinstance(value, dict):
        return value
    if spec.name in value:
        return value[spec.name]
    if "b64" in value and "BYTES" in spec.datatypes:
        return value
    one = spec.one_instance()
    raise InvalidInput(f"'{where}' must be {one} or {{\"{spec.name}\": {one}}}")


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
