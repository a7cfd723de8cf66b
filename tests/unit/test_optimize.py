"""The archive step's derived files and gates: ONNX export checked, int8 (torch or ONNX Runtime) gated."""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import onnx
import pytest
import torch
import yaml

from handlers.engines import OnnxEngine
from scripts.build import archive
from scripts.build.heldout import held_out
from scripts.build.optimize import compare
from scripts.harness import LocalModel, RawRequest

INT8_OPS = {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}  # only int8 graphs hold


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
        spinning = OnnxEngine(onnx.handler.engine.path, torch.device("cpu"), 1, spinning=True)
        assert spinning.session.get_session_options().get_session_config_entry(
            "session.intra_op.allow_spinning") == "1"
        (found,), (expected,) = onnx.run([RawRequest.json(row)]), eager.run([RawRequest.json(row)])
    assert found.status == 200 and found.json()["label"] == expected.json()["label"]


def test_onnx_int8_archive_serves_a_quantized_session_within_its_gate(tmp_path: Path) -> None:
    store = tmp_path / "store"
    config = variant(tmp_path, "tabular", backend="onnx", quantize="int8")
    assert archive.main([str(config), "--store", str(store)]) == 0
    mar = store / "tabular_variant.mar"
    with zipfile.ZipFile(mar) as packed:
        names = packed.namelist()
        report = json.loads(packed.read("optimization.json"))
    assert "model.int8.onnx" in names and "model.onnx" not in names  # the worker's file only
    assert report["onnx"]["max_abs_diff"] <= 1e-4  # the float export was checked first
    assert report["onnx_int8"]["quantized"] == 3 and report["onnx_int8"]["kept_float"] == 0
    assert report["int8"]["engine"] == "ONNX Runtime" and report["int8"]["loss"] <= report["int8"]["max_loss"]
    with LocalModel.from_mar(mar) as onnx_int8, \
            LocalModel.from_config(Path("configs/models/tabular.yaml")) as eager:
        engine = onnx_int8.handler.engine
        assert engine.path.name == "model.int8.onnx"
        assert INT8_OPS & {node.op_type for node in onnx.load(str(engine.path)).graph.node}
        options = engine.session.get_session_options()  # an idle worker must not spin
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        served = compare(eager, onnx_int8, held_out("tabular"))  # float PyTorch against the worker
        row = json.loads(Path("build/examples/tabular.json").read_text())
        (answer,) = onnx_int8.run([RawRequest.json(row)])
    assert 0 < served.max_abs_diff  # int8 really ran: not the float export
    assert served.loss <= onnx_int8.handler.options.max_quantization_loss
    assert served.mean_cosine > 0.999
    assert answer.status == 200


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_int8_past_its_loss_limit_is_refused_and_nothing_is_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, backend: str,
) -> None:
    store = tmp_path / "store"
    config = variant(tmp_path, "minilm", backend=backend, quantize="int8", max_quantization_loss=1e-9)
    with caplog.at_level(logging.INFO):
        assert archive.main([str(config), "--store", str(store)]) == 2
    error = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("error:"))
    assert str(config) in error and "model_config.handler.max_quantization_loss" in error and "fix:" in error
    assert ("ONNX Runtime" in error) == (backend == "onnx")  # the gate measured the int8 the worker runs
    assert [path.name for path in store.iterdir()] == [archive.FINGERPRINTS]  # no archive, no staging


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_skip_pattern_that_matches_no_layer_names_its_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, backend: str,
) -> None:
    config = variant(tmp_path, "tabular", backend=backend, quantize="int8", quantize_skip=["encoder.*"])
    with caplog.at_level(logging.INFO):
        assert archive.main([str(config), "--store", str(tmp_path / "store")]) == 2
    assert any("model_config.handler.quantize_skip" in r.getMessage() for r in caplog.records)
