"""The operating sections of the model YAML (scripts/config/policies.py), read by the one reader:
what a rollout must show (rollout:) and when tsctl replaces workers (recycle:)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from scripts.config.files import ConfigError
from scripts.config.model import load_spec
from scripts.config.policies import RecyclePolicy, parse_policy, parse_recycle
from scripts.operate.exits import Exit
from scripts.operate.tsctl import main as tsctl

TABULAR = Path("configs/models/tabular.yaml")


def with_section(tmp_path: Path, section: object, key: str = "recycle") -> Path:
    """tabular's YAML with its `key` section replaced (None: left out)."""
    config = yaml.safe_load(TABULAR.read_text())
    config[key] = section
    if section is None:
        del config[key]
    path = tmp_path / "tabular.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(("section", "key"), [
    ({"golden": "missing.jsonl", "p95_ms": 100, "min_accuracy": 0.9}, "rollout.golden"),
    ({"golden": "g.jsonl", "p95_ms": 100}, "rollout"),
    ({"golden": "g.jsonl", "p95_ms": 100, "min_agreement": 0.9}, "rollout.compare"),
    ({"golden": "g.jsonl", "p95_ms": 100, "min_accuracy": 1.5}, "rollout.min_accuracy"),
    ({"golden": "g.jsonl", "p95_ms": 100, "min_accuracy": 0.9, "keep": 1}, "rollout.keep"),
    ({"golden": "g.jsonl", "p95_ms": 100, "min_accuracy": 0.9, "canary": 5}, "rollout.canary"),
])
def test_a_bad_rollout_section_names_its_key(tmp_path: Path, section: dict[str, object], key: str) -> None:
    (tmp_path / "g.jsonl").write_text('{"content_type": "text/plain", "body": "x"}\n')
    with pytest.raises(ConfigError) as error:
        parse_policy(Path("m.yaml"), section, tmp_path)
    assert error.value.key == key and "fix:" in str(error.value)


def test_tsctl_names_the_missing_rollout_section_and_its_fix(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    path = with_section(tmp_path, None, "rollout")
    code = tsctl(["gate", "tabular", "--url", "http://127.0.0.1:9", "--policy", str(path)])
    assert code == Exit.USAGE
    assert f"{path}: key 'rollout': missing" in caplog.text and "add a rollout: section" in caplog.text


def test_the_model_yaml_carries_a_recycle_policy(tmp_path: Path) -> None:
    spec = load_spec(with_section(tmp_path, {"max_rss_mb": 900, "max_age_minutes": 720}))
    assert spec.recycle == RecyclePolicy(max_rss_mb=900.0, max_age_minutes=720.0)


@pytest.mark.parametrize(
    ("section", "key", "fix"),
    [
        ({"max_rss": 900}, "recycle.max_rss", "max_rss_mb"),
        ({"max_rss_mb": 0}, "recycle.max_rss_mb", "max_rss_mb: 1500"),
        ({"max_rss_mb": "1 GB"}, "recycle.max_rss_mb", "max_rss_mb: 1500"),
        ({"max_age_minutes": True}, "recycle.max_age_minutes", "max_age_minutes: 1440"),
        ({}, "recycle", "recycle: {max_rss_mb: 1500}"),
        ([900], "recycle", "recycle: {max_rss_mb: 1500}"),
    ],
)
def test_a_bad_recycle_section_names_file_key_and_fix(tmp_path: Path, section: object, key: str,
                                                      fix: str) -> None:
    path = with_section(tmp_path, section)
    with pytest.raises(ConfigError) as caught:
        load_spec(path)
    assert caught.value.key == key
    assert str(path) in str(caught.value) and fix in str(caught.value)


def test_no_section_means_no_policy(tmp_path: Path) -> None:
    assert parse_recycle(tmp_path / "m.yaml", None) is None


def test_if_over_without_a_policy_is_a_usage_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "store").mkdir()
    properties = tmp_path / "config.properties"
    properties.write_text("model_store=store\n")
    code = tsctl(["--ts-config", str(properties), "--server-dir", str(tmp_path), "recycle", "tabular",
                  "--if-over", "--config", str(with_section(tmp_path, None))])
    assert code == Exit.USAGE
    assert "key 'recycle': missing" in caplog.text and "drop --if-over" in caplog.text
