"""A request as its envelope read it, with the protocol gone: what `preprocess` is handed.

Every request shape (a native JSON body, a raw image or text body, the fields of a
form, KServe v1 `instances`, an OIP input tensor) becomes the same thing: the
values of its instances, each with the place it came from, so a handler validates
one form and its error messages still point at what the client sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


# Not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__, 0.6 µs more
# per object, and a request makes one of each of Payload, Instances and Parsed (all three unfrozen). Nothing
# mutates them.
@dataclass(slots=True)
class Instances:
    """The instance values of one body, or of one form field.

    `values`: one JSON value per instance (a list of 30 numbers, a base64 string,
    a text), or with `raw` the whole body as the only instance (bytes, or str for
    `text/*`). `names`: where each value was, for error messages ("features",
    "features[2]", "instances[0]", "inputs[0][1]", "body"). `single`: one instance
    sent without a list around it, so its answer is one object, not a list of one.
    """

    values: list[Any]
    names: list[str]
    single: bool = False
    raw: bool = False
    label: str = ""  # "form field 'b'": put before the errors of this part

    def __len__(self) -> int:
        return len(self.values)


@dataclass(slots=True)
class Parsed:
    """One request, parsed: its parts (several only for a form) and the outputs asked for."""

    parts: list[Instances]
    outputs: tuple[str, ...] = ()  # OIP `outputs`; () means all

    @property
    def single(self) -> bool:
        return len(self.parts) == 1 and self.parts[0].single

    def count(self) -> int:
        if len(self.parts) == 1:  # all but forms: once per request in three places
            return len(self.parts[0].values)
        return sum(len(part) for part in self.parts)


def join_instances(pieces: Sequence[Any]) -> Any:
    """Instances of several requests (or form fields) as one: tensors or numpy arrays concatenated
    (one copy for the batch), lists chained."""
    if all(isinstance(piece, torch.Tensor) for piece in pieces):
        return torch.cat(list(pieces))
    if all(isinstance(piece, np.ndarray) for piece in pieces):
        return np.concatenate(pieces)
    return [instance for piece in pieces for instance in piece]
