"""Open Inference Protocol (KServe v2) tensors: read an input tensor, write output tensors.

An OIP tensor in JSON is `{"name", "shape", "datatype", "data"}`, with `data`
in row-major order, flat or nested. Our models take one input whose first
dimension counts instances; `instance_values` checks the tensor against the
model's `Input` and splits it into one JSON value per instance, which the
handler then validates as it validates any other instance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from handlers.errors import InvalidInput, brief
from handlers.signature import DATATYPES, Input, Output, float_limit, integer_range

_TENSOR_KEYS = frozenset({"name", "shape", "datatype", "data", "parameters"})


def instance_values(tensor: Any, spec: Input, where: str) -> list[Any]:
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
    return _split(flat, shape[0], spec.shape)


@dataclass(frozen=True)
class OutputTensor:
    """One output tensor of a response, flattened row-major as OIP asks."""

    name: str
    datatype: str
    shape: list[int]
    data: list[Any]

    @classmethod
    def of(cls, spec: Output, values: torch.Tensor | Sequence[Any]) -> OutputTensor:
        """One request's values of a declared output: a tensor [n, *shape] or n plain values."""
        if isinstance(values, torch.Tensor):
            return cls(spec.name, spec.datatype, list(values.shape), values.flatten().tolist())
        return cls(spec.name, spec.datatype, [len(values)], list(values))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": self.shape, "data": self.data}


def _check_parameters(parameters: Any, where: str) -> None:
    if not isinstance(parameters, dict):
        raise InvalidInput(f"'{where}.parameters' must be an object")
    if "binary_data_size" in parameters:
        raise InvalidInput(
            f"'{where}': the binary tensor data extension is not supported; send data as JSON"
        )


def _datatype(value: Any, spec: Input, where: str) -> str:
    accepted = ", ".join(sorted(spec.datatypes))
    if not isinstance(value, str) or value not in DATATYPES:
        raise InvalidInput(
            f"'{where}.datatype' {brief(value)} is not an OIP datatype; this model takes {accepted}"
        )
    if value not in spec.datatypes:
        raise InvalidInput(f"'{where}.datatype' is {value}; this model takes {accepted}")
    return str(value)


def _shape(value: Any, spec: Input, where: str) -> list[int]:
    expected = spec.expected_shape()
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise InvalidInput(f"'{where}.shape' must be a list of non-negative integers like {expected}")
    if tuple(value[1:]) != spec.shape or len(value) != len(spec.shape) + 1:
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
    elif (bounds := integer_range(datatype)) is not None:
        ok = isinstance(element, int) and bounds[0] <= element <= bounds[1]
    else:  # NaN and infinities fail here too
        ok = _float_magnitude(element) <= float_limit(datatype)
    if not ok:
        raise InvalidInput(f"'{where}' is {brief(element)}, not a valid {datatype} value")


def _float_magnitude(number: int | float) -> float:
    try:
        magnitude = abs(float(number))
    except OverflowError:  # an integer with hundreds of digits
        return math.inf
    return magnitude if math.isfinite(magnitude) else math.inf


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
