"""Checks on decoded request values that several handlers share."""

from __future__ import annotations

import math
from typing import Any

import torch

from handlers.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from handlers.payload import Payload
from handlers.tensors import brief

FLOAT32_MAX = float(torch.finfo(torch.float32).max)
_NUMBER_TYPES = frozenset({int, float})  # not bool: True is not a feature value
# Media types read as JSON ("" is a request without a Content-Type).
JSON_TYPES = frozenset({"application/json", "text/json", ""})


def require_content_type(payload: Payload, accepted: frozenset[str], expected: str) -> None:
    """415 unless the request's media type is one of `accepted`."""
    if payload.content_type not in accepted:
        raise UnsupportedMediaType(
            f"content type '{payload.content_type}' is not supported; send {expected}"
        )


def check_count(count: int, limit: int, what: str) -> None:
    """413 when one request carries more than `limit` instances."""
    if count > limit:
        raise PayloadTooLarge(f"{count} {what} in one request; the limit is {limit}")


def float_rows(value: Any, width: int, field: str, max_rows: int) -> tuple[torch.Tensor, bool]:
    """A row of `width` finite numbers, or a list of such rows, as a float32 tensor [N, width].

    Returns the tensor and whether a single row was sent (without a list around it).
    """
    if not isinstance(value, list) or not value:
        raise InvalidInput(f"'{field}' must be a list of {width} numbers or a list of such lists")
    single = not isinstance(value[0], list)
    if single:
        return float_matrix([value], width, [field]), True
    check_count(len(value), max_rows, "rows")
    return float_matrix(value, width, [f"{field}[{number}]" for number in range(len(value))]), False


def float_matrix(rows: list[Any], width: int, names: list[str]) -> torch.Tensor:
    """Rows of exactly `width` finite float32 numbers as a tensor [N, width]; `names` name each row.

    Good rows take a fast path; only when it fails are values checked one by one,
    to name the first bad one in the error.
    """
    matrix = _fast_matrix(rows, width)
    if matrix is not None:
        return matrix
    for row, where in zip(rows, names, strict=True):
        _check_row(row, width, where)
    return torch.tensor([[float(number) for number in row] for row in rows], dtype=torch.float32)


def _fast_matrix(rows: list[Any], width: int) -> torch.Tensor | None:
    """The rows as float32 when every value is a finite float32 number, else None.

    Plain Python on purpose: for rows of a few dozen numbers it is several times
    faster than checking with tensor operations.
    """
    for row in rows:
        if type(row) is not list or len(row) != width or not _NUMBER_TYPES.issuperset(map(type, row)):
            return None
        try:
            total = sum(row)
        except OverflowError:  # a huge JSON integer among floats
            return None
        if total != total or not max(map(abs, row)) <= FLOAT32_MAX:  # NaN, infinity, beyond float32
            return None
    return torch.tensor(rows, dtype=torch.float32)


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
