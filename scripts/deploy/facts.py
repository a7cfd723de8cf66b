"""What the cluster artifacts need from each model YAML: its name, version, workers and timeouts.

Taken from the spec scripts/config/model.py reads (its text only: `make manifests`
works before `make models` has built any weights, and without torch), then checked
for the numbers the artifacts derive something from, which the YAML may leave out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.config.files import ConfigError
from scripts.config.model import CONFIG_DIR, ModelSpec, load_spec

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
    return model_facts(load_spec(path))


def model_facts(spec: ModelSpec) -> ModelFacts:
    """The numbers the artifacts need, each present (the YAML may leave a TorchServe default)."""
    numbers = {key: _positive(spec.source, spec.model_config, key) for key in NUMBERS}
    return ModelFacts(
        source=spec.source, name=spec.name, version=spec.version,
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


def _positive(path: Path, config: Mapping[str, Any], key: str) -> int:
    value = config.get(key)
    low = 0 if key == "maxBatchDelay" else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(path, f"model_config.{key}", f"expected an integer >= {low}, got {value!r}",
                          f"set {key} ({NUMBERS[key]} is derived from it)")
    return value
