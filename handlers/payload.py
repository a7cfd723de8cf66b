"""One request as the handler sees it, read from TorchServe's per-request dict.

TorchServe hands `handle()` one dict per request: `body` for a raw body, field
names for form data. JSON bodies with exactly `application/json` arrive decoded,
`text/*` as str, anything else (and JSON that failed to parse) as bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from handlers.errors import InvalidInput, UnsupportedMediaType

# Form fields or raw-body names TorchServe uses for the request's main input.
_BODY_FIELDS = ("body", "data")


@dataclass(frozen=True)
class Payload:
    """The body of one request, its media type and its headers."""

    index: int
    body: Any
    content_type: str
    headers: Mapping[str, Any]

    @classmethod
    def from_torchserve(cls, index: int, item: Mapping[str, Any], context: Any) -> Payload:
        """Pick the request's input field and its content type from TorchServe's dict."""
        if not isinstance(item, Mapping):
            raise InvalidInput("request carries no readable body")
        field = _input_field(item)
        headers = _request_headers(context, index)
        return cls(index, item[field], _content_type(headers, field), headers)

    def header(self, name: str) -> str | None:
        """A request header, looked up without regard to case."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted and isinstance(value, str):
                return value
        return None

    def is_empty(self) -> bool:
        return self.body is None or (isinstance(self.body, (bytes, bytearray, str)) and not self.body)

    def json(self) -> Any:
        """The body as JSON; a body that is not valid UTF-8 JSON is a 400.

        TorchServe already decoded bodies sent as exactly application/json (any
        non-bytes value then is the document itself); others are parsed here.
        """
        if self.content_type == "application/json" and not isinstance(self.body, (bytes, bytearray)):
            return self.body
        if self.is_empty():
            raise InvalidInput("empty request body: expected a JSON document")
        text = self.text()
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise InvalidInput(f"body is not valid JSON: {error.msg} at position {error.pos}") from None
        except (ValueError, RecursionError):  # nesting too deep, integers over 4300 digits
            raise InvalidInput("body is JSON too deeply nested or with numbers too long") from None

    def text(self) -> str:
        """The body as text; undecodable bytes are a 400."""
        if isinstance(self.body, str):
            return self.body
        if isinstance(self.body, (bytes, bytearray)):
            try:
                return bytes(self.body).decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput("body is not valid UTF-8 text") from None
        raise InvalidInput("body is structured JSON, expected text")

    def raw_bytes(self) -> bytes:
        """The body as bytes, as sent (str bodies are re-encoded as UTF-8)."""
        if isinstance(self.body, (bytes, bytearray)):
            return bytes(self.body)
        if isinstance(self.body, str):
            return self.body.encode("utf-8")
        raise UnsupportedMediaType(
            f"expected binary data, got a JSON body (content type '{self.content_type}')"
        )


def _input_field(item: Mapping[str, Any]) -> str:
    for name in _BODY_FIELDS:
        if name in item:
            return name
    if len(item) == 1:
        return next(iter(item))
    if not item:
        raise InvalidInput("empty request: no body and no form fields")
    fields = ", ".join(sorted(map(str, item)))
    raise InvalidInput(f"expected one form field named 'data' (or a raw body), got: {fields}")


def _request_headers(context: Any, index: int) -> Mapping[str, Any]:
    try:
        headers = context.get_all_request_header(index)
    except (AttributeError, IndexError, TypeError):
        return {}
    return headers if isinstance(headers, Mapping) else {}


def _content_type(headers: Mapping[str, Any], field: str) -> str:
    """The media type of `field` (TorchServe files it under the field's name), lower-cased."""
    per_field = headers.get(field)
    value = per_field.get("content-type") if isinstance(per_field, Mapping) else None
    if not value:
        value = next(
            (v for k, v in headers.items() if k.lower() == "content-type" and isinstance(v, str)),
            "",
        )
    return str(value).split(";", 1)[0].strip().lower()
