"""The tabular handler through TorchServe's Context, against in-process predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scripts.build import datasets
from scripts.harness import LocalModel, RawRequest
from tests.helpers import reference_tabular

CONFIG = Path("configs/models/tabular.yaml")


@pytest.fixture(scope="module")
def tabular() -> LocalModel:
    return LocalModel.from_config(CONFIG)


def test_batch_answers_match_the_model_and_bad_rows_fail_alone(tabular: LocalModel) -> None:
    rows = datasets.breast_cancer().held_out_x[:4]
    expected = reference_tabular(rows)
    nan_row = rows[0].tolist()
    nan_row[3] = float("nan")
    results = tabular.run([
        RawRequest.json({"features": rows[0].tolist()}),
        RawRequest.json({"features": rows[1].tolist()[:29]}),            # 29 features
        RawRequest.json({"features": [rows[2].tolist(), rows[3].tolist()]}),
        RawRequest(f'{{"features": {nan_row}}}'.replace("nan", "NaN").encode()),
        RawRequest.json({"features": ["a"] * 30}),
        RawRequest.json({"features": rows[1].tolist()}, ) ,
        RawRequest(rows[1].tobytes(), "image/png"),                      # wrong content type
        RawRequest(b'{"features": [' + b"1" * 400 + b", 0" * 29 + b"]}"),  # int beyond float
        RawRequest.json({"features": [3.4e38] + [0.0] * 29}),             # float32 max is fine
    ])
    assert [r.status for r in results] == [200, 400, 200, 400, 400, 200, 415, 400, 200]
    assert results[0].json()["class_index"] == expected[0]
    assert [item["class_index"] for item in results[2].json()] == list(expected[2:4])
    assert results[5].json()["class_index"] == expected[1]
    assert "exactly 30 numbers, got 29" in results[1].json()["error"]
    assert "finite" in results[3].json()["error"]
    probabilities = results[0].json()["probabilities"]
    assert set(probabilities) == {"malignant", "benign"}
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_too_many_rows_is_413() -> None:
    with LocalModel.from_config(CONFIG, {"max_instances": 2, "warmup": False}) as small:
        row = np.zeros(30).tolist()
        results = small.run([RawRequest.json({"features": [row, row, row]})])
    assert results[0].status == 413
    assert "limit is 2" in results[0].json()["error"]
