"""The faster paths around the engine answer what the plain ones answered; make overhead runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.batch import instances_of
from handlers.envelopes import serialize
from scripts.build import datasets
from scripts.harness import LocalModel, RawRequest
from scripts.measure.overhead import ROOT, measure

TABULAR = Path("configs/models/tabular.yaml")
MINILM = Path("configs/models/minilm.yaml")


@pytest.fixture(scope="module")
def tabular() -> LocalModel:
    return LocalModel.from_config(TABULAR, {"warmup": False})


@pytest.fixture(scope="module")
def minilm() -> LocalModel:
    return LocalModel.from_config(MINILM, {"warmup": False})


def test_batch_postprocess_answers_as_each_request_did(tabular: LocalModel,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    rows = datasets.breast_cancer().held_out_x[:3].tolist()
    requests = [
        RawRequest.json({"features": rows[0]}),
        RawRequest.json({"features": rows[1][:29]}),  # a bad request in the middle: 400 alone
        RawRequest.json({"features": [rows[1], rows[2]]}),
        RawRequest.json({"instances": rows[:2]}),
        RawRequest.json({"inputs": [{"name": "features", "shape": [2, 30], "datatype": "FP32",
                                     "data": rows[1:]}], "outputs": [{"name": "probabilities"}]}),
    ]
    batched = tabular.run(requests)
    monkeypatch.setattr(type(tabular.handler), "POSTPROCESS_BY_ROW", False)  # each request on its own
    alone = tabular.run(requests)
    assert [r.status for r in batched] == [200, 400, 200, 200, 200]
    assert [r.status for r in alone] == [r.status for r in batched]
    for ours, theirs in zip(batched, alone, strict=True):
        assert ours.json() == theirs.json()  # the same float64 values, not just close ones


def test_a_failing_batch_postprocess_fails_only_its_request(tabular: LocalModel,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    handler_class = type(tabular.handler)
    original = handler_class.postprocess

    def picky(self: object, rows: torch.Tensor) -> dict[str, object]:
        if len(rows) > 1:  # any batch, and the request that carries two rows
            raise RuntimeError("postprocess exploded")
        return original(self, rows)  # type: ignore[arg-type]

    monkeypatch.setattr(handler_class, "postprocess", picky)
    rows = datasets.breast_cancer().held_out_x[:3].tolist()
    results = tabular.run([RawRequest.json({"features": rows[0]}),
                           RawRequest.json({"features": rows[1:]}),
                           RawRequest.json({"features": rows[2]})])
    assert [r.status for r in results] == [200, 500, 200]
    assert "exploded" not in results[1].body


FLOATS = st.floats(width=32, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(FLOATS, max_size=50))
def test_serialize_gives_clients_the_same_numbers(values: list[float]) -> None:
    body = {"embedding": values, "label": "benign", "class_index": 1}
    ours = json.loads(serialize(body))
    assert ours == json.loads(json.dumps(body, allow_nan=False))
    assert np.array_equal(np.array(ours["embedding"], dtype=np.float32), np.array(values, dtype=np.float32))


def test_serialize_fails_and_falls_back_as_json_dumps_does() -> None:
    for bad in ({"x": math.nan}, [math.inf], {"x": [1.0, -math.inf]}):
        with pytest.raises(ValueError):
            serialize(bad)
    for odd in ({1: "int key"}, [2**70], {"text": "\ud800"}, {"none": None, "text": "null"}):
        assert serialize(odd) == json.dumps(odd, allow_nan=False)
    assert json.loads(serialize({"label": "é 東京"})) == {"label": "é 東京"}  # as UTF-8, not \u escapes
    with pytest.raises(TypeError):
        serialize({"tensor": torch.zeros(1)})


def test_measure_gives_per_request_figures_for_both_trees() -> None:
    report = measure("tabular", batch=4, rounds=3, warmup=1, against=ROOT)
    for side in ("new", "old"):
        assert report[side]["us_per_request"] > 0
        assert report[side]["min_ok"] == 4
        assert report[side]["stages"]["preprocess"] > 0
    assert report["ratio"] > 0


NUMBERS = st.one_of(FLOATS, st.integers(-(2**100), 2**100).filter(lambda n: abs(n) < 3.4e38))


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.lists(NUMBERS, min_size=3, max_size=3), min_size=1, max_size=4))
def test_float_rows_become_the_float32_values_torch_tensor_gave(rows: list[list[float]]) -> None:
    from handlers.validation import float_matrix

    names = [f"features[{n}]" for n in range(len(rows))]
    expected = torch.tensor([[float(number) for number in row] for row in rows], dtype=torch.float32)
    assert torch.equal(torch.from_numpy(float_matrix(rows, 3, names)), expected)


def test_tabular_collates_one_tensor_of_every_request_row(tabular: LocalModel) -> None:
    rows = datasets.breast_cancer().held_out_x[:3].tolist()
    pieces = [instances_of(tabular.handler, {"features": rows[0]}),
              instances_of(tabular.handler, {"features": rows[1:]})]
    batch = tabular.handler.collate(pieces)
    assert batch.dtype == torch.float32
    assert torch.equal(batch, torch.tensor(rows, dtype=torch.float32))


@settings(max_examples=200, deadline=None)
@given(values=st.lists(FLOATS, min_size=1, max_size=50))
def test_numpy_rows_serialize_as_their_lists_did(values: list[float]) -> None:
    from handlers.signature import Output, json_columns

    rows = torch.tensor([values, values[::-1]], dtype=torch.float32)
    spec = (Output("embedding", "FP32", (len(values),)),)
    (_, lists), = json_columns({"embedding": rows}, spec)
    (_, arrays), = json_columns({"embedding": rows}, spec, arrays=True)
    for as_list, as_array in zip(lists, arrays, strict=True):
        assert serialize({"embedding": as_array}) == serialize({"embedding": as_list})
        assert json.loads(serialize([{"embedding": as_array}])) == [{"embedding": as_list}]


def test_a_non_finite_numpy_row_still_fails_serialize() -> None:
    with pytest.raises(ValueError):
        serialize({"embedding": np.array([1.0, math.nan])})


def test_minilm_answers_the_numbers_the_plain_path_gave(minilm: LocalModel,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    requests = [RawRequest.json({"text": "a sentence to embed"}), RawRequest.json({"text": 3}),
                RawRequest.json({"text": ["two texts", "of different lengths, this one"]}),
                RawRequest.json({"instances": ["v1 text"]})]
    fast = minilm.run(requests)
    monkeypatch.setattr(type(minilm.handler), "POSTPROCESS_BY_ROW", False)
    monkeypatch.setattr(type(minilm.handler), "postprocess", lambda self, rows: {"embedding": rows})
    plain = minilm.run(requests)  # postprocess per request: lists of floats, as before
    assert [r.status for r in fast] == [200, 400, 200, 200]
    assert [r.body for r in fast] == [r.body for r in plain]
