"""Errors that carry an HTTP status, converted to responses in one place.

Each error also inherits the matching builtin (an invalid input is also a
`ValueError`), so callers can catch broadly or narrowly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class RequestError(Exception):
    """A problem with one request: it gets `status` and a JSON body, the batch goes on."""

    status: int = 400
    reason: str = "Bad Request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, object]:
        """The JSON body the client sees: what was wrong, never a traceback."""
        return {"code": self.status, "type": type(self).__name__, "error": self.message}


class InvalidInput(RequestError, ValueError):
    """Malformed body or values the model cannot take (400)."""


class PayloadTooLarge(RequestError, ValueError):
    """Over a documented per-request limit (413)."""

    status = 413
    reason = "Payload Too Large"


class UnsupportedMediaType(RequestError, TypeError):
    """A content type this handler does not read (415)."""

    status = 415
    reason = "Unsupported Media Type"


class InternalError(RequestError, RuntimeError):
    """A server-side failure; the client sees only this short message (500)."""

    status = 500
    reason = "Internal Server Error"


class OutOfResources(RequestError, MemoryError):
    """The device ran out of memory for this batch (507)."""

    status = 507
    reason = "Insufficient Storage"


class HandlerContractError(RuntimeError):
    """A handler broke the base class contract (a bug, not a client mistake)."""


@contextmanager
def located(where: str) -> Iterator[None]:
    """Prefix the message of a RequestError raised inside with `where` ("'image[2]': ...")."""
    try:
        yield
    except RequestError as error:
        raise type(error)(f"{where}: {error.message}") from None


def brief(value: Any, limit: int = 40) -> str:
    """`repr(value)`, cut to `limit` characters: error messages must not echo a whole body."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
