"""Property tests: any body gives either decoded instances or a RequestError, never another exception."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers.base import Decoded, ModelHandler
from handlers.errors import RequestError
from handlers.payload import Payload
from scripts.harness import LocalModel

MODELS = ("tabular", "digits", "minilm")
CONTENT_TYPES = st.sampled_from(
    ["application/json", "text/plain", "image/png", "application/octet-stream", "", "text/csv"]
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=10**300) | st.floats()
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=40)
    | st.dictionaries(st.sampled_from(["features", "text", "x", "instances"]) | st.text(max_size=5),
                      children, max_size=4),
    max_leaves=80,
)
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def handlers() -> dict[str, ModelHandler]:
    return {name: LocalModel.from_config(Path(f"configs/models/{name}.yaml")).handler
            for name in MODELS}


def decode_or_request_error(handler: ModelHandler, body: Any, content_type: str) -> None:
    payload = Payload(0, body, content_type, {})
    try:
        decoded = handler.decode(payload)
    except RequestError as error:
        assert 400 <= error.status < 500 and error.message
        return
    assert isinstance(decoded, Decoded) and len(decoded.instances) >= 1
    if isinstance(decoded.instances, torch.Tensor):
        assert torch.isfinite(decoded.instances).all()


@pytest.mark.parametrize("model", MODELS)
@SETTINGS
@given(body=st.binary(max_size=300), content_type=CONTENT_TYPES)
def test_any_bytes(handlers: dict[str, ModelHandler], model: str, body: bytes,
                   content_type: str) -> None:
    decode_or_request_error(handlers[model], body, content_type)


@pytest.mark.parametrize("model", MODELS)
@SETTINGS
@given(document=JSON_VALUES, as_text=st.booleans())
def test_any_json_value(handlers: dict[str, ModelHandler], model: str, document: Any,
                        as_text: bool) -> None:
    # TorchServe hands over decoded JSON, or the raw bytes when the content type differs.
    body = json.dumps(document).encode() if as_text else document
    decode_or_request_error(handlers[model], body, "application/json")


@SETTINGS
@given(rows=st.lists(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32),
                              min_size=30, max_size=30), min_size=1, max_size=5))
def test_valid_tabular_rows_always_decode(handlers: dict[str, ModelHandler],
                                          rows: list[list[float]]) -> None:
    decoded = handlers["tabular"].decode(Payload(0, {"features": rows}, "application/json", {}))
    assert decoded.instances.shape == (len(rows), 30)
