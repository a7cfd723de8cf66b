"""What decoding one request yields: its instances, ready to join a batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch

from handlers.errors import InvalidInput

Instances = TypeVar("Instances", torch.Tensor, list)  # what decode gives per request


@dataclass(frozen=True, slots=True)
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


def join_instances(pieces: Sequence[Any]) -> Any:
    """Instances of several requests (or form fields) as one: tensors concatenated, lists chained."""
    if all(isinstance(piece, torch.Tensor) for piece in pieces):
        return torch.cat(list(pieces))
    return [instance for piece in pieces for instance in piece]
