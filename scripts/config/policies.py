"""The two operating sections of a model's YAML: the rollout gate and the recycle limits.

    rollout:                  # what a new version must show before it serves (tsctl rollout, tsctl gate)
      golden: configs/golden/tabular.jsonl   # inputs with expected answers (scripts/build/golden.py)
      min_accuracy: 0.95      # share of golden inputs answered as expected
      compare: label          # a response field compared with the current default's ...
      min_agreement: 0.98     # ... mean agreement: cosine for number lists, equality otherwise
      p95_ms: 250             # 95th-percentile latency of the golden requests, one at a time
      keep: 3                 # registered versions kept after a rollout (the default always)
    recycle:                  # when tsctl replaces a model's workers (scripts/operate/recycle.py)
      max_rss_mb: 1500        # a worker's resident memory, its child processes included (MiB)
      max_age_minutes: 1440   # a worker process older than this

rollout: needs at least one of min_accuracy and min_agreement; every golden request
must answer 2xx (a 5xx or 4xx fails the gate whatever the scores). recycle: takes
either key or both. Both sections are optional in the YAML; the tsctl commands that
need one say so. They are parsed here, beside the rest of the YAML, so that one
reader (scripts/config/model.py) checks the whole file and tsctl imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.config.files import ConfigError

POLICY_KEYS = {"golden", "min_accuracy", "compare", "min_agreement", "p95_ms", "keep"}
RECYCLE_KEYS = ("max_rss_mb", "max_age_minutes")


@dataclass(frozen=True)
class RolloutPolicy:
    golden: Path
    p95_ms: float
    min_accuracy: float | None = None
    compare: str | None = None
    min_agreement: float | None = None
    keep: int = 3


@dataclass(frozen=True)
class RecyclePolicy:
    max_rss_mb: float | None = None
    max_age_minutes: float | None = None


def parse_policy(path: Path, value: Any, root: Path) -> RolloutPolicy | None:
    """Check the rollout section; ConfigError names the key and the fix."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(path, "rollout", "expected a mapping",
                          "see the docstring of scripts/config/policies.py")
    unknown = sorted(set(value) - POLICY_KEYS)
    if unknown:
        raise ConfigError(path, f"rollout.{unknown[0]}", "unknown key",
                          f"remove it or use one of {sorted(POLICY_KEYS)}")
    golden = value.get("golden")
    if not isinstance(golden, str) or not (root / golden).is_file():
        raise ConfigError(path, "rollout.golden", f"no golden set at {golden!r}",
                          "write the path of a JSON-lines file; "
                          "`python -m scripts.build.golden NAME` writes one")
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


def parse_recycle(path: Path, value: Any) -> RecyclePolicy | None:
    """Check the recycle section; ConfigError names the file, the key and the fix."""
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise ConfigError(path, "recycle", f"expected a mapping with {' and/or '.join(RECYCLE_KEYS)}, "
                          f"got {value!r}", "write e.g. recycle: {max_rss_mb: 1500}")
    unknown = sorted(set(value) - set(RECYCLE_KEYS))
    if unknown:
        raise ConfigError(path, f"recycle.{unknown[0]}", "unknown key",
                          f"remove it or use one of {list(RECYCLE_KEYS)}")
    for key, item in value.items():
        if isinstance(item, bool) or not isinstance(item, int | float) or item <= 0:
            raise ConfigError(path, f"recycle.{key}", f"expected a number > 0, got {item!r}",
                              f"write e.g. {key}: {1500 if key == 'max_rss_mb' else 1440}")
    return RecyclePolicy(**{key: float(item) for key, item in value.items()})


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
