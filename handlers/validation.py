"""Checks on request values that several handlers share: instance counts and rows of numbers."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from handlers.errors import InvalidInput, PayloadTooLarge, brief

FLOAT32_MAX = float(torch.finfo(torch.float32).max)
_NUMBER_TYPES = frozenset({int, float})  # not bool: True is not a feature value


def check_count(count: int, limit: int, what: str) -> None:
    """413 when one request carries more than `limit` instances."""
    if count > limit:
        raise PayloadTooLarge(f"{count} {what} in one request; the limit is {limit}")


def check_budget(total: int, limit: int, what: str, option: str) -> None:
    """413 when one request's instances together hold more than `limit` `what` (handler option `option`).

    A per-request work budget: it refuses the one request that would make its
    batch outlast TorchServe's responseTimeout, which would fail the whole batch.
    """
    if total > limit:
        raise PayloadTooLarge(f"{total} {what} in one request; the limit is {limit} ({option})")


def float_matrix(rows: list[Any], width: int, names: list[str]) -> np.ndarray:
    """Rows of exactly `width` finite float32 numbers as a float32 array [N, width]; `names` name each
    row. An array, not a tensor: `ModelHandler.collate` makes one tensor of the batch's arrays, and
    numpy converts a row at a fifth of torch.tensor's cost (the same float32 values).

    Good rows take a fast path; only when it fails are values checked one by one, to name
    the first bad one in the error.
    """
    if not _numbers_fit(rows, width):
        for row, where in zip(rows, names, strict=True):
            _check_row(row, width, where)
        rows = [[float(number) for number in row] for row in rows]
    array = np.array(rows, dtype=np.float32)
    return array if array.ndim == 2 else array.reshape(len(rows), width)  # no rows: [0, width]


def _numbers_fit(rows: list[Any], width: int) -> bool:
    """Whether every value is a finite float32 number (int or float, not bool).

    Plain Python on purpose: for rows of a few dozen numbers it is several times
    faster than checking with array operations.
    """
    for row in rows:
        if type(row) is not list or len(row) != width or not _NUMBER_TYPES.issuperset(map(type, row)):
            return False
        try:
            total = sum(row)
        except OverflowError:  # a huge JSON integer among floats
            return False
        if total != total or not max(map(abs, row)) <= FLOAT32_MAX:  # NaN, infinity, beyond float32
            return False
    return True


def _check_row(row: Any, width: int, where: str) -> None:
    if not isinstance(row, list) or len(row) != width:
        got = f"{len(row)} values" if isinstance(row, list) else type(row).__name__
        raise InvalidInput(f"'{where}' must hold exactly {width} numbers, got {got}")
    for position, number in enumerate(row):
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise InvalidInput(f"'{where}[{position}]' must be a number, got {brief(number)}")
        try:
            value = float(number)
        except OverflowError:  # a JSON integer with hundreds of digits
            value = math.inf
        if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
            raise InvalidInput(f"'{where}[{position}]' must be a finite float32 number, got {brief(number)}")
