"""Open Inference Protocol (KServe v2) tensors: read an input tensor, write output tensors.

An OIP tensor in JSON is `{"name", "shape", "datatype", "data"}`, with `data`
in row-major order, flat or nested. Our models take one input whose first
dimension counts instances; `instance_values` checks the tensor against the
model's `TensorSpec` and splits it into one JSON value per instance, which the
handler then validates as it validates any other instance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from handlers.errors import InvalidInput

_INTEGER_RANGES = {
    "INT8": (-(2**7), 2**7 - 1), "INT16": (-(2**15), 2**15 - 1),
    "INT32": (-(2**31), 2**31 - 1), "INT64": (-(2**63), 2**63 - 1),
    "UINT8": (0, 2**8 - 1), "UINT16": (0, 2**16 - 1),
    "UINT32": (0, 2**32 - 1), "UINT64": (0, 2**64 - 1),
}
_FLOAT_LIMITS = {  # the largest finite magnitude each float datatype holds
    "FP16": float(torch.finfo(torch.float16).max), "BF16": float(torch.finfo(torch.bfloat16).max),
    "FP32": float(torch.finfo(torch.float32).max), "FP64": float(torch.finfo(torch.float64).max),
}
NUMBER_TYPES = frozenset(_FLOAT_LIMITS) | frozenset(_INTEGER_RANGES)
DATATYPES = NUMBER_TYPES | {"BOOL", "BYTES"}
_TENSOR_KEYS = frozenset({"name", "shape", "datatype", "data", "parameters"})


@dataclass(frozen=True)
class TensorSpec:
    """The one input a model takes: its name, accepted datatypes and per-instance shape."""

    name: str
    datatypes: frozenset[str]
    instance_shape: tuple[int, ...] = ()

    def expected_shape(self) -> str:
        return "[" + ", ".join(["N", *map(str, self.instance_shape)]) + "]"


def instance_values(tensor: Any, spec: TensorSpec, where: str) -> list[Any]:
    """One JSON value per instance (a number list, a string, ...) from an OIP input tensor."""
    if not isinstance(tensor, dict):
        raise InvalidInput(f"'{where}' must be an object with name, shape, datatype and data")
    unknown = sorted(set(tensor) - _TENSOR_KEYS)
    if unknown:
        raise InvalidInput(
            f"'{where}' has unknown keys {brief(unknown)}; an OIP tensor has {sorted(_TENSOR_KEYS)}"
        )
    missing = [key for key in ("name", "shape", "datatype", "data") if key not in tensor]
    if missing:
        raise InvalidInput(f"'{where}' is missing {missing}")
    if tensor["name"] != spec.name:
        raise InvalidInput(f"'{where}.name' is {brief(tensor['name'])}; this model's input is '{spec.name}'")
    _check_parameters(tensor.get("parameters", {}), where)
    datatype = _datatype(tensor["datatype"], spec, where)
    shape = _shape(tensor["shape"], spec, where)
    flat = _flatten(tensor["data"], shape, where)
    if len(flat) != math.prod(shape):
        raise InvalidInput(
            f"'{where}': shape {shape} holds {math.prod(shape)} elements but data has {len(flat)}"
        )
    for position, element in enumerate(flat):
        _check_element(element, datatype, f"{where}.data[{position}]")
    return _split(flat, shape[0], spec.instance_shape)


@dataclass(frozen=True)
class OutputTensor:
    """One output tensor of a response, flattened row-major as OIP asks."""

    name: str
    datatype: str
    shape: list[int]
    data: list[Any]

    @classmethod
    def of(cls, name: str, datatype: str, values: torch.Tensor | Sequence[Any]) -> OutputTensor:
        """From a tensor or from a flat list of per-instance values (strings, ints)."""
        if isinstance(values, torch.Tensor):
            return cls(name, datatype, list(values.shape), values.flatten().tolist())
        return cls(name, datatype, [len(values)], list(values))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": self.shape, "data": self.data}


def _check_parameters(parameters: Any, where: str) -> None:
    if not isinstance(parameters, dict):
        raise InvalidInput(f"'{where}.parameters' must be an object")
    if "binary_data_size" in parameters:
        raise InvalidInput(
            f"'{where}': the binary tensor data extension is not supported; send data as JSON"
        )


def _datatype(value: Any, spec: TensorSpec, where: str) -> str:
    accepted = ", ".join(sorted(spec.datatypes))
    if not isinstance(value, str) or value not in DATATYPES:
        raise InvalidInput(
            f"'{where}.datatype' {brief(value)} is not an OIP datatype; this model takes {accepted}"
        )
    if value not in spec.datatypes:
        raise InvalidInput(f"'{where}.datatype' is {value}; this model takes {accepted}")
    return str(value)


def _shape(value: Any, spec: TensorSpec, where: str) -> list[int]:
    expected = spec.expected_shape()
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise InvalidInput(f"'{where}.shape' must be a list of non-negative integers like {expected}")
    if tuple(value[1:]) != spec.instance_shape or len(value) != len(spec.instance_shape) + 1:
        raise InvalidInput(f"'{where}.shape' is {brief(value)}; this model takes {expected}")
    if value[0] == 0:
        raise InvalidInput(f"'{where}.shape' {value} holds no instances; send at least one")
    return list(value)


def _flatten(data: Any, shape: list[int], where: str) -> list[Any]:
    """`data` flat, or nested exactly as `shape` says (no ragged rows), as one flat list."""
    if not isinstance(data, list):
        raise InvalidInput(f"'{where}.data' must be a list (flat or nested, row-major)")
    if not any(isinstance(item, list) for item in data):
        return data
    flat: list[Any] = []
    _collect(data, shape, f"{where}.data", flat)
    return flat


def _collect(data: Any, shape: list[int], where: str, flat: list[Any]) -> None:
    if not shape:
        if isinstance(data, list):
            raise InvalidInput(f"'{where}' is nested deeper than the shape says")
        flat.append(data)
        return
    if not isinstance(data, list) or len(data) != shape[0]:
        got = f"{len(data)} items" if isinstance(data, list) else brief(data)
        raise InvalidInput(f"'{where}' must be a list of {shape[0]} (shape says so), got {got}")
    for position, item in enumerate(data):
        _collect(item, shape[1:], f"{where}[{position}]", flat)


def _check_element(element: Any, datatype: str, where: str) -> None:
    if datatype == "BYTES":
        ok = isinstance(element, str)
    elif datatype == "BOOL":
        ok = isinstance(element, bool)
    elif isinstance(element, bool) or not isinstance(element, (int, float)):
        ok = False
    elif datatype in _INTEGER_RANGES:
        low, high = _INTEGER_RANGES[datatype]
        ok = isinstance(element, int) and low <= element <= high
    else:  # NaN and infinities fail here too
        ok = _float_magnitude(element) <= _FLOAT_LIMITS[datatype]
    if not ok:
        raise InvalidInput(f"'{where}' is {brief(element)}, not a valid {datatype} value")


def _float_magnitude(number: int | float) -> float:
    try:
        magnitude = abs(float(number))
    except OverflowError:  # an integer with hundreds of digits
        return math.inf
    return magnitude if math.isfinite(magnitude) else math.inf


def brief(value: Any, limit: int = 40) -> str:
    """`repr(value)`, cut to `limit` characters: error messages must not echo a whole body."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _split(flat: list[Any], count: int, instance_shape: tuple[int, ...]) -> list[Any]:
    """Row-major `flat` as `count` nested lists of `instance_shape` (scalars when it is ())."""
    size = math.prod(instance_shape)
    return [_nest(flat[i * size:(i + 1) * size], instance_shape) for i in range(count)]


def _nest(flat: list[Any], shape: tuple[int, ...]) -> Any:
    if not shape:
        return flat[0]
    if len(shape) == 1:
        return flat
    step = math.prod(shape[1:])
    return [_nest(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]
