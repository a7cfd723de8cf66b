"""Bad model configs: one line naming the file, the key and the fix; nothing written."""

from __future__ import annotations

import logging
import shutil
import zipfile
from pathlib import Path

import pytest
import yaml

from scripts.build import archive
from scripts.build.checks import check_buildable
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
        ({"model_config": {"batchSize": "eight"}}, "model_config.batchSize", "batchSize: 1"),
        ({"model_config": {"minWorkers": 3, "maxWorkers": 1}}, "model_config.minWorkers", "<="),
        ({"model_config": {"deviceType": "tpu"}}, "model_config.deviceType", "deviceType: gpu"),
        ({"model_config": {"batchsize": 8}}, "model_config.batchsize", "batchSize"),
        ({"name": "tab\n"}, "name", "name: tabular"),
        ({"handler": "scripts/harness.py"}, "handler", "handler: handlers/tabular.py"),
        ({"files": ["build/weights/tabular/tabular.safetensors", "handlers/tabular.py"]}, "files",
         "rename"),
        ({"example": {"content_type": "image/png", "file": 5}}, "example", "content_type"),
        ({"gpu": [64]}, "gpu", "batchSize: 64"),
        ({"gpu": {"batchSize": 0}}, "gpu.batchSize", "batchSize: 1"),
        ({"gpu": {"jobQueueSize": 32, "batchSize": 64}}, "gpu.jobQueueSize", ">= 64"),
        ({"gpu": {"handler": "fast"}}, "gpu.handler", "handler: {backend: torch}"),
    ],
)
def test_each_mistake_in_the_text_names_file_key_and_fix(
    tmp_path: Path, changes: dict[str, object], key: str, fix: str
) -> None:
    path = write(tmp_path, **changes)
    with pytest.raises(ConfigError) as caught:
        load_spec(path)
    assert_one_line(caught.value, path, key, fix)


@pytest.mark.parametrize(
    ("changes", "key", "fix"),
    [
        ({"files": ["build/weights/nope.safetensors"]}, "files", "make models"),
        ({"handler": "handlers/nope.py"}, "handler", "existing handlers"),
        ({"model_config": {"handler": {"max_instances": "many"}}}, "model_config.handler.max_instances",
         "TabularHandler.Options"),
        ({"model_config": {"handler": {"colour": 1}}}, "model_config.handler.colour", "Options"),
        ({"model_config": {"handler": {"class_names": ["a"]}}}, "model_config.handler.class_names",
         "Options"),
        ({"model_config": {"handler": {"weights": "other.safetensors"}}},
         "model_config.handler.weights", "files:"),
        ({"handler": "handlers/errors.py"}, "handler", "ModelHandler subclass"),
        ({"gpu": {"handler": {"backend": "tensorrt"}}}, "gpu.handler.backend", "TabularHandler.Options"),
    ],
)
def test_each_mistake_the_build_would_meet_names_file_key_and_fix_and_only_the_build_check_sees_it(
    tmp_path: Path, changes: dict[str, object], key: str, fix: str
) -> None:
    """The YAML reader stays torch-free and works before `make models`; the archive step and the
    harness check what needs the built tree and the handler's code (both profiles' options)."""
    path = write(tmp_path, **changes)
    spec = load_spec(path)
    with pytest.raises(ConfigError) as caught:
        check_buildable(spec)
    assert_one_line(caught.value, path, key, fix)


def assert_one_line(error: ConfigError, path: Path, key: str, fix: str) -> None:
    message = str(error)
    assert message.startswith(f"{path}: key '{key}'")
    assert "fix:" in message and fix in message
    assert "\n" not in message


@pytest.mark.parametrize("changes", [{"model_config": {"batchSize": 0}},  # the YAML reader's
                                     {"gpu": {"handler": {"backend": "tensorrt"}}}])  # the build check's
def test_archive_refuses_a_bad_config_and_writes_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, changes: dict[str, object]) -> None:
    store = tmp_path / "store"
    bad = write(tmp_path, **changes)
    code = archive.main([str(Path("configs/models/tabular.yaml")), str(bad), "--store", str(store)])
    assert code == 2
    assert f"error: {bad}: key '" in caplog.text
    assert not store.exists() or not any(store.iterdir())


def test_good_configs_parse_and_build_in_both_profiles() -> None:
    for path in sorted(Path("configs/models").glob("*.yaml")):
        spec = load_spec(path)
        assert spec.name == path.stem
        assert spec.model_config["batchSize"] >= 1
        assert set(spec.profiles) == {"cpu", "gpu"}  # every shipped model has a GPU profile
        check_buildable(spec)


def test_the_yaml_reads_in_a_checkout_where_make_models_never_ran(tmp_path: Path) -> None:
    """tsctl and `make manifests` read the YAML without the built tree; the build check needs it."""
    for folder in ("configs", "handlers"):
        shutil.copytree(folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    spec = load_spec(tmp_path / "configs/models/tabular.yaml", root=tmp_path)
    assert spec.files == (Path("build/weights/tabular/tabular.safetensors"),)
    assert spec.rollout is not None and spec.rollout.golden == tmp_path / "configs/golden/tabular.jsonl"
    with pytest.raises(ConfigError, match="tabular.safetensors does not exist; fix: run `make models`"):
        check_buildable(spec, root=tmp_path)


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
