"""One request (or one form field of it) as the handler sees it.

TorchServe hands `handle()` one dict per request: `body` for a raw body (plus
any query parameters), one entry per field for multipart and url-encoded forms.
JSON bodies with exactly `application/json` arrive decoded, `text/*` as str,
anything else (and JSON that failed to parse) as bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from handlers.errors import InvalidInput, UnsupportedMediaType

_URLENCODED = "application/x-www-form-urlencoded"
_MULTIPART = "multipart/form-data"


# Not frozen, for the per-request cost handlers/request.py gives.
@dataclass(slots=True)
class Payload:
    """The body of one request or form field, its media type and the request's headers.

    `parsed` means `body` is already the decoded JSON document. `headers` holds the
    request's headers with lower-case names.
    """

    index: int
    field: str
    body: Any
    content_type: str
    headers: Mapping[str, Any]
    parsed: bool = False

    @classmethod
    def parts_from_torchserve(cls, index: int, item: Mapping[str, Any], context: Any) -> list[Payload]:
        """The raw body, or each multipart field in the order sent (fields without a type are text).

        With a multipart form, query-string parameters arrive as fields too (TorchServe
        passes no URL), so they count as fields.
        """
        if type(item) is not dict and not isinstance(item, Mapping):  # isinstance(Mapping) is slow
            raise InvalidInput("request carries no readable body")
        raw = _request_headers(context, index)  # request headers and per-field content types
        headers = {key.lower(): value for key, value in raw.items() if isinstance(value, str)}
        request_type = _media_type(headers.get("content-type"))
        if request_type == _URLENCODED:  # TorchServe split the body at '&' and '=': it is lost
            raise UnsupportedMediaType(
                "url-encoded forms are not read (curl -d sends one); send the body with its real "
                "type, e.g. -H 'Content-Type: application/json', or a multipart form (curl -F)"
            )
        if request_type != _MULTIPART:  # a raw body; any other entries are query parameters
            if "body" not in item:
                raise InvalidInput("request carries no body")
            content_type = _field_content_type(raw, "body") or request_type
            return [cls.of(index, "body", item["body"], content_type, headers)]
        if not item:
            raise InvalidInput("multipart form carries no fields")
        return [
            cls.of(index, str(name), value, _field_content_type(raw, name) or "text/plain", headers)
            for name, value in item.items()
        ]

    @classmethod
    def of(cls, index: int, field: str, body: Any, content_type: str, headers: Mapping[str, Any]) -> Payload:
        parsed = content_type == "application/json" and not isinstance(body, (bytes, bytearray))
        return cls(index, field, body, content_type, headers, parsed)

    def with_document(self, document: Any) -> Payload:
        """This payload with its JSON already parsed, so nobody parses it twice."""
        return Payload(self.index, self.field, document, self.content_type, self.headers, True)

    def header(self, name: str) -> str | None:
        """A request header, looked up without regard to case."""
        return self.headers.get(name if name.islower() else name.lower())

    def is_empty(self) -> bool:
        return self.body is None or (isinstance(self.body, (bytes, bytearray, str)) and not self.body)

    def json(self) -> Any:
        """The body as JSON; a body that is not valid UTF-8 JSON is a 400.

        TorchServe already decoded bodies sent as exactly application/json; others
        are parsed here.
        """
        if self.parsed:
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
        if isinstance(self.body, str) and not self.parsed:
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
        if isinstance(self.body, str) and not self.parsed:
            return self.body.encode("utf-8")
        raise UnsupportedMediaType(
            f"expected binary data, got a JSON body (content type '{self.content_type}')"
        )


def _request_headers(context: Any, index: int) -> Mapping[str, Any]:
    try:
        headers = context.get_all_request_header(index)
    except (AttributeError, IndexError, TypeError):
        return {}
    return headers if isinstance(headers, Mapping) else {}


def _field_content_type(headers: Mapping[str, Any], field: str) -> str:
    """The media type TorchServe filed under the field's name, lower-cased, without parameters."""
    per_field = headers.get(field)
    value = per_field.get("content-type") if isinstance(per_field, Mapping) else None
    return _media_type(value)


def _media_type(value: Any) -> str:
    if not value:
        return ""
    known = _MEDIA_TYPES.get(value) if type(value) is str else None
    if known is not None:
        return known
    return str(value).split(";", 1)[0].strip().lower()


# The media types of almost every request, read without splitting and lower-casing each time.
_MEDIA_TYPES = {kind: kind for kind in ("application/json", "text/plain", "application/octet-stream",
                                        "image/jpeg", "image/png", _MULTIPART)}
