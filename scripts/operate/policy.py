"""The `rollout:` section of a model's YAML: what a new version must show before it serves.

    rollout:
      golden: configs/golden/tabular.jsonl   # inputs with expected answers (scripts/operate/golden.py)
      min_accuracy: 0.95      # share of golden inputs answered as expected
      compare: label          # a response field compared with the current default's ...
      min_agreement: 0.98     # ... mean agreement: cosine for number lists, equality otherwise
      p95_ms: 250             # 95th-percentile latency of the golden requests, one at a time
      keep: 3                 # registered versions kept after a rollout (the default always)

At least one of min_accuracy and min_agreement; every golden request must answer
2xx (a 5xx or 4xx fails the gate whatever the scores).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from scripts.config.files import ConfigError

POLICY_KEYS = {"golden", "min_accuracy", "compare", "min_agreement", "p95_ms", "keep"}


@dataclass(frozen=True)
class RolloutPolicy:
    golden: Path
    p95_ms: float
    min_accuracy: float | None = None
    compare: str | None = None
    min_agreement: float | None = None
    keep: int = 3


def read_policy(path: Path, root: Path = Path(".")) -> RolloutPolicy:
    """The rollout section of one model YAML, without loading anything else of it (tsctl stays light)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(path, "-", f"cannot be read ({error})", "give the model's YAML, e.g. "
                          "configs/models/tabular.yaml") from None
    policy = parse_policy(path, raw.get("rollout") if isinstance(raw, dict) else None, root)
    if policy is None:
        raise ConfigError(path, "rollout", "missing: a rollout needs a golden set and thresholds",
                          "add a rollout: section (see scripts/operate/policy.py)")
    return policy


def parse_policy(path: Path, value: Any, root: Path) -> RolloutPolicy | None:
    """Check the section; ConfigError names the key and the fix."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(path, "rollout", "expected a mapping",
                          "see the docstring of scripts/operate/policy.py")
    unknown = sorted(set(value) - POLICY_KEYS)
    if unknown:
        raise ConfigError(path, f"rollout.{unknown[0]}", "unknown key",
                          f"remove it or use one of {sorted(POLICY_KEYS)}")
    golden = value.get("golden")
    if not isinstance(golden, str) or not (root / golden).is_file():
        raise ConfigError(path, "rollout.golden", f"no golden set at {golden!r}",
                          "write the path of a JSON-lines file; "
                          "`python -m scripts.operate.golden NAME` writes one")
    policy = RolloutPolicy(
        golden=root / golden,
        p95_ms=_number(path, value, "p95_ms", low=0.0, high=None, required=True) or 0.0,
        min_accuracy=_number(path, value, "min_accuracy", low=0.0, high=1.0),
        compare=value.get("compare"),
        min_agreement=_number(path, value, "min_agreement", low=0.0, high=1.0),
        keep=_keep(path, value.get("keep", 3)),
    )
    if policy.min_accuracy is None and policy.min_agreement is None:
        raise ConfigError(path, "rollout", "gives neither min_accuracy nor min_agreement",
                          "add min_accuracy: 0.95 (golden labels) or compare + min_agreement")
    if (policy.min_agreement is None) != (policy.compare is None) or not (
            policy.compare is None or isinstance(policy.compare, str)):
        raise ConfigError(path, "rollout.compare", "compare and min_agreement go together",
                          "name the response field to compare, e.g. compare: embedding, with min_agreement")
    return policy


def _number(path: Path, value: dict[str, Any], key: str, low: float, high: float | None,
            required: bool = False) -> float | None:
    item = value.get(key)
    if item is None and not required:
        return None
    in_range = isinstance(item, int | float) and not isinstance(item, bool) and item > low and (
        high is None or item <= high)
    if not in_range:
        bounds = f"in ({low:g}, {high:g}]" if high is not None else f"> {low:g}"
        raise ConfigError(path, f"rollout.{key}", f"expected a number {bounds}, got {item!r}",
                          f"write e.g. {key}: {0.95 if high else 250}")
    return float(item)


def _keep(path: Path, item: Any) -> int:
    if isinstance(item, bool) or not isinstance(item, int) or item < 2:
        raise ConfigError(path, "rollout.keep", f"expected an integer >= 2, got {item!r}",
                          "keep at least 2 versions, so `rollback` has one to return to")
    return item
