"""Bad model configs: one line naming the file, the key and the fix; nothing written."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import pytest
import yaml

from scripts.build import archive
from scripts.config.model import ConfigError, load_spec

GOOD = yaml.safe_load(Path("configs/models/tabular.yaml").read_text())


def write(tmp_path: Path, **changes: object) -> Path:
    config = {**GOOD, **changes}
    config["model_config"] = {**GOOD["model_config"], **changes.get("model_config", {})}
    for key in [k for k, v in changes.items() if v is None]:
        config.pop(key)
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    ("changes", "key", "fix"),
    [
        ({"colour": "blue"}, "colour", "remove it"),
        ({"version": 1.0}, "version", 'version: "1.0"'),
        ({"name": None}, "name", "add it"),
        ({"files": ["build/weights/nope.safetensors"]}, "files", "make models"),
        ({"handler": "handlers/nope.py"}, "handler", "existing handlers"),
        ({"model_config": {"batchSize": "eight"}}, "model_config.batchSize", "batchSize: 1"),
        ({"model_config": {"minWorkers": 3, "maxWorkers": 1}}, "model_config.minWorkers", "<="),
        ({"model_config": {"deviceType": "tpu"}}, "model_config.deviceType", "deviceType: gpu"),
        ({"model_config": {"batchsize": 8}}, "model_config.batchsize", "batchSize"),
        ({"model_config": {"handler": {"max_instances": "many"}}}, "model_config.handler.max_instances",
         "TabularHandler.Options"),
        ({"model_config": {"handler": {"colour": 1}}}, "model_config.handler.colour", "Options"),
        ({"model_config": {"handler": {"class_names": ["a"]}}}, "model_config.handler.class_names",
         "Options"),
        ({"model_config": {"handler": {"weights": "other.safetensors"}}},
         "model_config.handler.weights", "files:"),
        ({"name": "tab\n"}, "name", "name: tabular"),
        ({"handler": "handlers/errors.py"}, "handler", "ModelHandler subclass"),
        ({"files": ["build/weights/tabular/tabular.safetensors", "handlers/tabular.py"]}, "files",
         "rename"),
        ({"example": {"content_type": "image/png", "file": 5}}, "example", "content_type"),
        ({"gpu": [64]}, "gpu", "batchSize: 64"),
        ({"gpu": {"batchSize": 0}}, "gpu.batchSize", "batchSize: 1"),
        ({"gpu": {"jobQueueSize": 32, "batchSize": 64}}, "gpu.jobQueueSize", ">= 64"),
        ({"gpu": {"handler": {"backend": "tensorrt"}}}, "gpu.handler.backend", "TabularHandler.Options"),
        ({"gpu": {"handler": "fast"}}, "gpu.handler", "handler: {backend: torch}"),
    ],
)
def test_each_mistake_names_file_key_and_fix(
    tmp_path: Path, changes: dict[str, object], key: str, fix: str
) -> None:
    path = write(tmp_path, **changes)
    with pytest.raises(ConfigError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: key '{key}'")
    assert "fix:" in message and fix in message
    assert "\n" not in message


def test_archive_refuses_a_bad_config_and_writes_nothing(tmp_path: Path) -> None:
    store = tmp_path / "store"
    bad = write(tmp_path, model_config={"batchSize": 0})
    code = archive.main([str(Path("configs/models/tabular.yaml")), str(bad), "--store", str(store)])
    assert code == 2
    assert not store.exists() or not any(store.iterdir())


def test_good_configs_parse() -> None:
    for path in sorted(Path("configs/models").glob("*.yaml")):
        spec = load_spec(path)
        assert spec.name == path.stem
        assert spec.model_config["batchSize"] >= 1


def test_archive_is_self_contained_and_not_rebuilt_when_unchanged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    store = tmp_path / "store"
    config = "configs/models/tabular.yaml"
    assert archive.main([config, "--store", str(store)]) == 0
    mar = store / "tabular.mar"
    with zipfile.ZipFile(mar) as packed:
        names = set(packed.namelist())
        model_config = yaml.safe_load(packed.read("model-config.yaml"))
    assert {"tabular.py", "handlers/base.py", "handlers/tabular.py", "tabular.safetensors",
            "MAR-INF/MANIFEST.json"} <= names
    assert model_config == GOOD["model_config"]
    assert [p.name for p in store.iterdir() if not p.name.startswith(".")] == ["tabular.mar"]
    first = mar.stat().st_mtime_ns
    caplog.clear()
    assert archive.main([config, "--store", str(store)]) == 0
    assert "up to date" in caplog.text
    assert mar.stat().st_mtime_ns == first


def test_the_gpu_profile_lays_its_keys_over_model_config_and_merges_handler_options(tmp_path: Path) -> None:
    path = write(tmp_path, gpu={"batchSize": 64, "jobQueueSize": 256, "handler": {"precision": "fp16"}})
    cpu, gpu = load_spec(path), load_spec(path, device="gpu")
    assert (cpu.model_config, cpu.device) == (GOOD["model_config"], "cpu")
    assert gpu.device == "gpu"
    assert gpu.model_config == {**GOOD["model_config"], "batchSize": 64, "jobQueueSize": 256,
                                "handler": {**GOOD["model_config"]["handler"], "precision": "fp16"}}


def test_archive_device_gpu_packs_the_gpu_profile_and_rebuilds_for_the_other_device(tmp_path: Path) -> None:
    store = tmp_path / "store"
    path = write(tmp_path, gpu={"batchSize": 64, "jobQueueSize": 256})
    for device, batch in (("gpu", 64), ("cpu", GOOD["model_config"]["batchSize"])):
        assert archive.main([str(path), "--store", str(store), "--device", device]) == 0
        with zipfile.ZipFile(store / "tabular.mar") as packed:
            assert yaml.safe_load(packed.read("model-config.yaml"))["batchSize"] == batch
