"""Property tests: any body, in any request shape, gives preprocessed instances or a RequestError.

They drive the same path `handle` takes for one request (envelope, then preprocess)
and check that nothing else ever escapes: no TypeError, no KeyError, no tensor
with a NaN in it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers.base import ModelHandler
from handlers.batch import instances_of
from handlers.errors import RequestError
from handlers.signature import DATATYPES
from scripts.harness import LocalModel

MODELS = ("tabular", "digits", "minilm")
CONTENT_TYPES = st.sampled_from(
    ["application/json", "text/plain", "image/png", "application/octet-stream", "", "text/csv"]
)
SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10**300) | st.floats()
           | st.text(max_size=20))
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=40)
    | st.dictionaries(st.sampled_from(["features", "text", "image", "b64", "x", "instances"])
                      | st.text(max_size=5), children, max_size=4),
    max_leaves=80,
)
# OIP tensors: mostly well-formed keys, with every field free to be wrong.
OIP_TENSORS = st.fixed_dictionaries(
    {"name": st.sampled_from(["features", "image", "text"]) | SCALARS,
     "datatype": st.sampled_from(sorted(DATATYPES)) | SCALARS,
     "shape": st.lists(st.integers(min_value=-1, max_value=40), max_size=3) | JSON_VALUES,
     "data": st.lists(SCALARS | st.floats(width=32), max_size=70) | JSON_VALUES},
    optional={"parameters": JSON_VALUES},
)
OIP_REQUESTS = st.fixed_dictionaries(
    {"inputs": st.lists(OIP_TENSORS, min_size=1, max_size=2) | JSON_VALUES},
    optional={"id": SCALARS, "outputs": JSON_VALUES, "parameters": JSON_VALUES},
)
V1_REQUESTS = st.fixed_dictionaries({"instances": st.lists(JSON_VALUES, max_size=5) | JSON_VALUES})
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def handlers() -> dict[str, ModelHandler]:
    return {name: LocalModel.from_config(Path(f"configs/models/{name}.yaml"), {"warmup": False}).handler
            for name in MODELS}


def decode_or_request_error(handler: ModelHandler, body: Any, content_type: str) -> None:
    try:
        instances = instances_of(handler, body, content_type)
    except RequestError as error:
        assert 400 <= error.status < 500 and error.message
        return
    assert len(instances) >= 1
    if isinstance(instances, torch.Tensor):
        assert torch.isfinite(instances).all()
    else:
        assert all(isinstance(text, str) and text.strip() for text in instances)


@pytest.mark.parametrize("model", MODELS)
@SETTINGS
@given(body=st.binary(max_size=300), content_type=CONTENT_TYPES)
def test_any_bytes(handlers: dict[str, ModelHandler], model: str, body: bytes,
                   content_type: str) -> None:
    decode_or_request_error(handlers[model], body, content_type)


@pytest.mark.parametrize("model", MODELS)
@SETTINGS
@given(document=JSON_VALUES | OIP_REQUESTS | V1_REQUESTS, as_text=st.booleans(),
       content_type=st.sampled_from(["application/json", "text/json", ""]))
def test_any_json_document(handlers: dict[str, ModelHandler], model: str, document: Any,
                           as_text: bool, content_type: str) -> None:
    # TorchServe hands over decoded JSON for application/json, raw bytes otherwise.
    decoded_by_torchserve = content_type == "application/json" and not as_text
    body = document if decoded_by_torchserve else json.dumps(document).encode()
    decode_or_request_error(handlers[model], body, content_type)


@SETTINGS
@given(rows=st.lists(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32),
                              min_size=30, max_size=30), min_size=1, max_size=5),
       shape=st.sampled_from(["native", "v1", "oip-flat", "oip-nested"]))
def test_valid_tabular_rows_always_decode(handlers: dict[str, ModelHandler],
                                          rows: list[list[float]], shape: str) -> None:
    flat = [value for row in rows for value in row]
    document = {
        "native": {"features": rows},
        "v1": {"instances": rows},
        "oip-flat": {"inputs": [{"name": "features", "shape": [len(rows), 30], "datatype": "FP32",
                                 "data": flat}]},
        "oip-nested": {"inputs": [{"name": "features", "shape": [len(rows), 30], "datatype": "FP64",
                                   "data": rows}]},
    }[shape]
    instances = instances_of(handlers["tabular"], document, "application/json")
    assert instances.shape == (len(rows), 30)
    assert instances.flatten().tolist() == pytest.approx(flat)
