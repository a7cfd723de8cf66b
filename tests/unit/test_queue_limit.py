"""`jobQueueSize` in the model YAML: checked, carried into the archive's model-config, set for every model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from scripts.build.archive import stage
from scripts.config.model import ConfigError, load_spec

TABULAR = yaml.safe_load(Path("configs/models/tabular.yaml").read_text())


def config_with(tmp_path: Path, **model_config: object) -> Path:
    document = {**TABULAR, "model_config": {**TABULAR["model_config"], **model_config}}
    path = tmp_path / "tabular.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.parametrize(("value", "problem", "fix"), [
    (0, "expected an integer >= 1, got 0", "jobQueueSize: 1"),
    ("lots", "expected an integer >= 1, got 'lots'", "jobQueueSize: 1"),
    (True, "expected an integer >= 1, got True", "jobQueueSize: 1"),
    (8, "8 is smaller than batchSize 16", "make it >= 16: about latency budget (s) x measured requests/s"),
])
def test_a_bad_queue_size_names_the_file_the_key_and_the_fix(
        tmp_path: Path, value: object, problem: str, fix: str) -> None:
    path = config_with(tmp_path, batchSize=16, jobQueueSize=value)
    with pytest.raises(ConfigError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: key 'model_config.jobQueueSize'")
    assert problem in message.split("fix:")[0] and fix in message.split("fix:")[1]


def test_a_queue_of_one_batch_is_accepted_and_reaches_the_archives_model_config(tmp_path: Path) -> None:
    spec = load_spec(config_with(tmp_path, batchSize=16, jobQueueSize=16))
    _, model_config = stage(spec, tmp_path / "staging")
    assert yaml.safe_load(model_config.read_text())["jobQueueSize"] == 16


@pytest.mark.parametrize("path", sorted(Path("configs/models").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_model_sets_a_queue_limit_from_a_stated_budget(path: Path) -> None:
    for device in ("cpu", "gpu"):  # the gpu: profile states its own
        config = load_spec(path, device=device).model_config
        assert config["jobQueueSize"] >= config["batchSize"]
    lines = [line for line in path.read_text().splitlines() if "jobQueueSize:" in line]
    assert len(lines) == 2, f"{path}: one jobQueueSize per profile"
    for line in lines:
        assert re.search(r"#.*budget", line), f"{path}: say which budget jobQueueSize comes from: {line}"
