"""What a model takes and gives, declared once: every protocol's checks and answers come from it.

    INPUT   = Input("features", NUMBER_TYPES, (30,))          # one instance: 30 numbers
    OUTPUTS = (Output("class_index", "INT64"),                 # one integer per instance
               Output("probabilities", "FP32", (2,)))          # two numbers per instance

The native JSON body (`{"features": ...}`), KServe v1 instances and the Open
Inference Protocol input tensor are all read against `Input`; the native answer,
the v1 predictions and the OIP output tensors are all written from `Output`s.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from handlers.errors import HandlerContractError

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
# Media types read as JSON ("" is a request without a Content-Type).
JSON_TYPES = frozenset({"application/json", "text/json", ""})


@dataclass(frozen=True)
class Input:
    """The one input a model takes: its name, accepted OIP datatypes and per-instance shape.

    `raw_types` are media types whose whole body is one instance (image bytes,
    plain text); `words` describes one instance in error messages.
    """

    name: str
    datatypes: frozenset[str]
    shape: tuple[int, ...] = ()
    raw_types: frozenset[str] = frozenset()
    words: str = ""

    def expected_shape(self) -> str:
        return "[" + ", ".join(["N", *map(str, self.shape)]) + "]"

    def one_instance(self) -> str:
        """One instance in words: '[30 numbers]', 'a string', or `words` when given."""
        if self.words:
            return self.words
        if self.datatypes <= {"BYTES"}:
            return "a string"
        if not self.shape:
            return "a number"
        return f"[{' x '.join(map(str, self.shape))} numbers]"

    def json_example(self) -> str:
        """The native JSON body in words, for the error a body without this input gets."""
        one = '"..."' if self.datatypes <= {"BYTES"} and not self.words else self.one_instance()
        return f'{{"{self.name}": {one}}} or {{"{self.name}": [{one}, ...]}}'

    def media_types(self) -> str:
        """What a native request may be sent as, for the 415 message."""
        raw = sorted(t for t in self.raw_types if t)
        return "application/json" + (f" or one of {', '.join(raw)}" if raw else "")

    def rank(self) -> int:
        return len(self.shape)

    def as_network_input(self) -> dict[str, tuple[int, ...]] | None:
        """This input as the network's one input, {name: shape}, when its values are numbers (which
        `float_matrix` makes one tensor of); None for bytes or text, which preprocess turns into others."""
        return {self.name: self.shape} if self.datatypes and self.datatypes <= NUMBER_TYPES else None


@dataclass(frozen=True)
class Output:
    """One named output: its OIP datatype and per-instance shape (() for one value per instance)."""

    name: str
    datatype: str
    shape: tuple[int, ...] = ()


@dataclass(frozen=True)
class Signature:
    """Everything the protocol layer needs to know about a model, and nothing it must call."""

    input: Input | None
    outputs: tuple[Output, ...]
    max_instances: int

    def output_names(self) -> list[str]:
        return [output.name for output in self.outputs]


def check_outputs(outputs: dict[str, Any], declared: tuple[Output, ...], count: int, where: str) -> None:
    """Raise HandlerContractError unless `outputs` holds every declared output, `count` rows of its shape."""
    if not isinstance(outputs, dict) or len(outputs) != len(declared):
        got = sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__
        raise HandlerContractError(f"{where} gave {got}; OUTPUTS declares {[s.name for s in declared]}")
    for spec in declared:
        values = outputs.get(spec.name)
        if values is None:
            raise HandlerContractError(f"{where} gave no '{spec.name}'; OUTPUTS declares it")
        shape = values.shape if isinstance(values, torch.Tensor) else (len(values),)
        if len(shape) != len(spec.shape) + 1 or shape[0] != count or tuple(shape[1:]) != spec.shape:
            raise HandlerContractError(f"{where} gave '{spec.name}' of shape {list(shape)} for {count} "
                                       f"instances; OUTPUTS declares {[count, *spec.shape]}")


def per_instance(outputs: Mapping[str, Any], declared: tuple[Output, ...],
                 count: int) -> list[dict[str, Any]]:
    """The outputs as one {name: JSON value} per instance, in declared order."""
    columns = json_columns(outputs, declared)
    return [{name: values[row] for name, values in columns} for row in range(count)]


def json_columns(outputs: Mapping[str, Any], declared: tuple[Output, ...],
                 arrays: bool = False) -> list[tuple[str, list[Any]]]:
    """Each declared output as (name, one JSON value per instance), converted in one call each.

    With `arrays`, an output of float rows (an embedding) gives each instance a float64 numpy
    row instead of a list: the same float64 values, which `envelopes.serialize` writes as the
    same text, without building a Python float for each number.
    """
    columns = []
    for spec in declared:
        values = outputs[spec.name]
        if not isinstance(values, torch.Tensor):
            columns.append((spec.name, list(values)))
        elif arrays and values.dim() > 1 and values.is_floating_point():
            columns.append((spec.name, list(values.numpy().astype(np.float64))))
        else:
            columns.append((spec.name, values.tolist()))
    return columns


class BatchOutputs:
    """A whole batch's named outputs (checked), handed out request by request as `OutputRows`.

    The JSON values are converted once for the batch, the first time a request asks; with
    `arrays`, float rows as numpy rows (`json_columns`), for a handler whose `answer` passes
    them on untouched.
    """

    def __init__(self, outputs: Mapping[str, Any], declared: tuple[Output, ...],
                 arrays: bool = False) -> None:
        self.outputs = outputs
        self.declared = declared
        self.arrays = arrays
        self._columns: list[tuple[str, list[Any]]] | None = None

    def columns(self) -> list[tuple[str, list[Any]]]:
        if self._columns is None:
            self._columns = json_columns(self.outputs, self.declared, self.arrays)
        return self._columns

    def rows(self, start: int, end: int) -> OutputRows:
        return OutputRows(self, start, end)


class OutputRows(Mapping[str, Any]):
    """One request's rows [start, end) of a batch's outputs: what its own postprocess would give."""

    def __init__(self, batch: BatchOutputs, start: int, end: int) -> None:
        self.batch, self.start, self.end = batch, start, end

    def __getitem__(self, name: str) -> Any:
        return self.batch.outputs[name][self.start:self.end]  # sliced when an envelope reads it

    def __iter__(self) -> Iterator[str]:
        return iter(self.batch.outputs)

    def __len__(self) -> int:
        return len(self.batch.outputs)

    def instances(self) -> list[dict[str, Any]]:
        """One {name: JSON value} per instance, as `per_instance` gives them."""
        columns = self.batch.columns()
        return [{name: values[row] for name, values in columns} for row in range(self.start, self.end)]


def integer_range(datatype: str) -> tuple[int, int] | None:
    return _INTEGER_RANGES.get(datatype)


def float_limit(datatype: str) -> float:
    return _FLOAT_LIMITS[datatype]
