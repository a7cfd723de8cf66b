"""The archive step's derived files and gates: ONNX export checked, int8 refused past its limit."""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import pytest
import yaml

from scripts.build import archive
from scripts.harness import LocalModel, RawRequest


def variant(tmp_path: Path, model: str, **handler_options: object) -> Path:
    """configs/models/MODEL.yaml under another name, with handler options changed."""
    config = yaml.safe_load(Path(f"configs/models/{model}.yaml").read_text())
    config["name"] = f"{model}_variant"
    config["model_config"]["handler"] = {**config["model_config"].get("handler", {}), **handler_options}
    path = tmp_path / f"{model}_variant.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_onnx_backend_archive_carries_a_checked_export_that_serves(tmp_path: Path) -> None:
    store = tmp_path / "store"
    assert archive.main([str(variant(tmp_path, "tabular", backend="onnx")), "--store", str(store)]) == 0
    mar = store / "tabular_variant.mar"
    with zipfile.ZipFile(mar) as packed:
        assert "model.onnx" in packed.namelist()
        report = json.loads(packed.read("optimization.json"))
    assert report["onnx"]["max_abs_diff"] <= 1e-4
    assert report["onnx"]["instances"] > 100
    row = json.loads(Path("build/examples/tabular.json").read_text())
    with LocalModel.from_mar(mar) as onnx, \
            LocalModel.from_config(Path("configs/models/tabular.yaml")) as eager:
        assert onnx.handler.options.backend == "onnx"
        options = onnx.handler.engine.session.get_session_options()  # an idle worker must not spin
        for pool in ("intra_op", "inter_op"):
            assert options.get_session_config_entry(f"session.{pool}.allow_spinning") == "0"
        (found,), (expected,) = onnx.run([RawRequest.json(row)]), eager.run([RawRequest.json(row)])
    assert found.status == 200 and found.json()["label"] == expected.json()["label"]


def test_int8_past_its_loss_limit_is_refused_and_nothing_is_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    store = tmp_path / "store"
    config = variant(tmp_path, "minilm", backend="torch", quantize="int8", max_quantization_loss=0.0001)
    with caplog.at_level(logging.INFO):
        assert archive.main([str(config), "--store", str(store)]) == 2
    error = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("error:"))
    assert str(config) in error and "max_quantization_loss" in error and "fix:" in error
    assert [path.name for path in store.iterdir()] == [archive.FINGERPRINTS]  # no archive, no staging


def test_a_skip_pattern_that_matches_no_layer_names_its_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    config = variant(tmp_path, "tabular", quantize="int8", quantize_skip=["encoder.*"])
    with caplog.at_level(logging.INFO):
        assert archive.main([str(config), "--store", str(tmp_path / "store")]) == 2
    assert any("model_config.handler.quantize_skip" in r.getMessage() for r in caplog.records)
