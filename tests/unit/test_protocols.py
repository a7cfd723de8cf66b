"""Every request shape through the harness: native, KServe v1, OIP, forms, base64; the battery."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from scripts import harness
from scripts.build import archive
from scripts.harness import FormField, LocalModel, RawRequest
from tests.battery import MODELS, Bad, bad_calls, check_bad, check_good, good_calls, oip
from tests.helpers import SENTENCES, sentence_transformers_embeddings


@pytest.fixture(scope="module")
def models() -> dict[str, LocalModel]:
    return {name: LocalModel.from_config(Path(f"configs/models/{name}.yaml"), {"warmup": False})
            for name in MODELS}


@pytest.fixture(scope="module")
def embeddings() -> dict[str, np.ndarray]:
    return dict(zip(SENTENCES, sentence_transformers_embeddings(SENTENCES), strict=True))


@pytest.mark.parametrize("model", MODELS)
def test_battery_and_good_shapes_share_one_batch(models: dict[str, LocalModel], model: str,
                                                 embeddings: dict[str, np.ndarray]) -> None:
    bad = [b for b in bad_calls() if b.call.model == model]
    good = [g for g in good_calls() if g.call.model == model]
    goods = itertools.cycle(good)
    interleaved = [item for b in bad for item in (b, next(goods))]
    results = models[model].run([item.call.raw_request() for item in interleaved])
    for item, result in zip(interleaved, results, strict=True):
        if isinstance(item, Bad):
            check_bad(item, result.status, result.body)
        else:
            assert result.status == 200, (item.call, result.body)
            check_good(item, result.json(), embeddings)


def test_battery_has_at_least_30_distinct_requests() -> None:
    calls = [bad.call for bad in bad_calls()]
    assert len(set(calls)) == len(calls) >= 30


def test_oip_answer_frame_and_output_selection(models: dict[str, LocalModel]) -> None:
    row = [1.0] * 30
    results = models["tabular"].run([
        RawRequest(oip("features", "FP32", [1, 30], row, id="abc", outputs=[{"name": "probabilities"}])),
        RawRequest(oip("features", "INT64", [1, 30], [1] * 30)),
    ])
    assert [r.status for r in results] == [200, 200]
    first, second = results[0].json(), results[1].json()
    assert first["model_name"] == "tabular" and first["model_version"] == "1.0" and first["id"] == "abc"
    assert [o["name"] for o in first["outputs"]] == ["probabilities"]
    assert first["outputs"][0]["shape"] == [1, 2] and first["outputs"][0]["datatype"] == "FP32"
    assert second["id"] == "req-1"  # no id sent: TorchServe's request id, so logs can be matched
    assert {o["name"]: o["datatype"] for o in second["outputs"]} == {
        "label": "BYTES", "class_index": "INT64", "probabilities": "FP32"}


def test_same_answer_in_every_shape(models: dict[str, LocalModel]) -> None:
    row = [float(v) for v in range(30)]
    results = models["tabular"].run([
        RawRequest.json({"features": row}),
        RawRequest.json({"instances": [{"features": row}]}),
        RawRequest(oip("features", "FP32", [1, 30], [row])),
    ])
    native, v1, v2 = (r.json() for r in results)
    assert native["class_index"] == v1["predictions"][0]["class_index"] == v2["outputs"][1]["data"][0]


def test_harness_command_runs_a_built_archive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert archive.main(["configs/models/tabular.yaml", "--store", str(tmp_path)]) == 0
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps({"instances": [[1.0] * 30]}))
    bad.write_text('{"features": [1, 2]}')
    code = harness.main(["predict", "--mar", str(tmp_path / "tabular.mar"),
                         "--file", str(good), "--file", str(bad)])
    printed = capsys.readouterr().out.splitlines()
    assert code == 1  # not every request succeeded
    assert printed[0] == f"{good}: 200 application/json" and '"predictions"' in printed[1]
    assert printed[2] == f"{bad}: 400 application/json" and "exactly 30 numbers" in printed[3]


def test_harness_command_by_model_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "sentence.txt"
    text.write_text("hello there")
    assert harness.main(["predict", "--model", "minilm", "--file", str(text),
                         "--content-type", "text/plain"]) == 0
    assert '"embedding"' in capsys.readouterr().out


def test_form_fields_are_native_bodies_whatever_their_names(models: dict[str, LocalModel]) -> None:
    png = Path("build/examples/digit.png").read_bytes()
    digits = models["digits"].run([
        RawRequest.multipart(FormField("body", png, "image/png"), FormField("other", png, "image/png")),
    ])
    assert digits[0].status == 200 and len(digits[0].json()) == 2
    tabular = models["tabular"].run([
        RawRequest.multipart(FormField("data", json.dumps({"instances": [[1.0] * 30]}).encode(),
                                       "application/json")),
    ])
    assert tabular[0].status == 400  # a form field is a native body, never an envelope
    assert "form field" not in tabular[0].json()["error"]  # one field: its own message
    assert 'expected a JSON object {"features"' in tabular[0].json()["error"]


def test_metrics_declared_in_the_yaml_are_emitted_per_batch(
    models: dict[str, LocalModel], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ts.metrics")
    models["tabular"].run([RawRequest.json({"features": [[1.0] * 30] * 3}), RawRequest(b"{"),
                           RawRequest.json({"instances": [[2.0] * 30]})])
    lines = [line for r in caplog.records for line in r.getMessage().splitlines()
             if line.startswith("[METRICS]")]

    def values(name: str, dimension: str = "") -> list[float]:
        return [float(line.split(":", 1)[1].split("|", 1)[0]) for line in lines
                if line.startswith(f"[METRICS]{name}.") and dimension in line]

    model = "ModelName:tabular,ModelVersion:1.0"
    assert values("BatchRequests", model) == [2]
    assert values("BatchInstances", model) == [4]
    assert values("HandlerResponses_total", "Status:200") == [2]
    assert values("HandlerResponses_total", "Status:400") == [1]
    assert values("HandlerErrors_total", "Kind:InvalidInput") == [1]
    for stage in ("preprocess", "collate", "inference", "postprocess", "serialize"):
        (seconds,) = values("HandlerStageSeconds", f"Stage:{stage}")
        assert 0 <= seconds < 5
