"""What the cluster artifacts need from each model YAML: its name, version, workers and timeouts.

Only these keys are read, so `make manifests` works before `make models` has built
any weights (scripts/config/model.py checks a YAML in full when it is archived; a
unit test checks both readers agree on the real configs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from scripts.config.files import ConfigError

# configs/models/, as scripts.config.model.CONFIG_DIR (not imported: that imports torch)
CONFIG_DIR = Path("configs/models")

# model_config keys the cluster artifacts derive something from, with what each feeds.
NUMBERS = {
    "minWorkers": "the KServe snapshot",
    "maxWorkers": "the resources",
    "batchSize": "the KServe snapshot",
    "maxBatchDelay": "the KServe snapshot",
    "responseTimeout": "the termination grace period",
    "startupTimeout": "the startup probe's budget",
}


@dataclass(frozen=True)
class ModelFacts:
    """One model as the deployment sees it (times in seconds, maxBatchDelay in ms)."""

    source: Path
    name: str
    version: str
    min_workers: int
    max_workers: int
    batch_size: int
    max_batch_delay: int
    response_timeout: int
    startup_timeout: int

    @property
    def archive(self) -> str:
        return f"{self.name}.mar"


def read_facts(path: Path) -> ModelFacts:
    """The deployment's view of one model YAML; ConfigError names the file, the key and the fix."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(path, "-", f"cannot read it ({error})", "fix the file or its YAML syntax") from None
    if not isinstance(raw, dict):
        raise ConfigError(path, "-", "expected a mapping at the top", "see configs/models/*.yaml")
    for key in ("name", "version"):
        if not isinstance(raw.get(key), str):
            raise ConfigError(path, key, f"expected a string, got {raw.get(key)!r}",
                              f'write e.g. {key}: "1.0"' if key == "version" else f"write {key}: NAME")
    config = raw.get("model_config")
    if not isinstance(config, dict):
        raise ConfigError(path, "model_config", "missing or not a mapping",
                          "add model_config with " + ", ".join(NUMBERS))
    numbers = {key: _positive(path, config, key) for key in NUMBERS}
    if numbers["minWorkers"] > numbers["maxWorkers"]:
        raise ConfigError(path, "model_config.minWorkers", "larger than maxWorkers",
                          "make minWorkers <= maxWorkers")
    return ModelFacts(
        source=path, name=raw["name"], version=raw["version"],
        min_workers=numbers["minWorkers"], max_workers=numbers["maxWorkers"],
        batch_size=numbers["batchSize"], max_batch_delay=numbers["maxBatchDelay"],
        response_timeout=numbers["responseTimeout"], startup_timeout=numbers["startupTimeout"],
    )


def read_all(config_dir: Path = CONFIG_DIR) -> list[ModelFacts]:
    """Every model YAML of `config_dir`, sorted by name; at least one, names unique."""
    facts = [read_facts(path) for path in sorted(config_dir.glob("*.yaml"))]
    if not facts:
        raise ConfigError(config_dir, "-", "no model YAMLs found", "add configs/models/NAME.yaml")
    names = [model.name for model in facts]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate:
        raise ConfigError(config_dir, "name", f"two YAMLs name the model {duplicate!r}",
                          "give every model a distinct name")
    return sorted(facts, key=lambda model: model.name)


def total_workers(models: Sequence[ModelFacts]) -> int:
    """Workers one server runs at most: the resources are sized for this many."""
    return sum(model.max_workers for model in models)


def _positive(path: Path, config: dict[str, Any], key: str) -> int:
    value = config.get(key)
    low = 0 if key == "maxBatchDelay" else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(path, f"model_config.{key}", f"expected an integer >= {low}, got {value!r}",
                          f"set {key} ({NUMBERS[key]} is derived from it)")
    return value
