"""`make monitor`'s parts that need no Prometheus: the target rewrite and the one install path."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml

from scripts.deploy.monitor import INSTALL, SCRAPE_CONFIG, rewrite_targets


def shipped() -> dict[str, object]:
    return yaml.safe_load(SCRAPE_CONFIG.read_text())


def test_the_shipped_config_is_used_as_it_is_where_the_port_matches() -> None:
    config = shipped()
    assert rewrite_targets(config, "http://127.0.0.1:8082") == []
    assert config == shipped()


def test_only_a_differing_target_is_rewritten_and_labels_are_added_on_request() -> None:
    config = shipped()
    assert rewrite_targets(config, "http://127.0.0.1:40123") == ["127.0.0.1:8082 -> 127.0.0.1:40123"]
    job = config["scrape_configs"][0]  # type: ignore[index]
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:40123"]
    assert job["static_configs"][0]["labels"] == {"service": "torchserve"}  # untouched
    assert config["global"] == shipped()["global"]  # type: ignore[index]
    rewrite_targets(config, "http://127.0.0.1:40123", {"pod": "p-0"})
    assert job["static_configs"][0]["labels"] == {"service": "torchserve", "pod": "p-0"}


def test_make_test_make_monitor_and_ci_install_prometheus_through_one_helper() -> None:
    makefile, ci = Path("Makefile").read_text(), Path(".ci/run").read_text()
    assert makefile.count(f"{INSTALL} --if-possible") == 2  # test and test-e2e: skip where impossible
    assert f"\t{INSTALL}\n" in makefile and f"\n{INSTALL}\n" in ci  # make prometheus, CI: must install


def test_without_apt_the_helper_says_how_to_install(tmp_path: Path) -> None:
    """A PATH with neither prometheus nor apt-get: --if-possible exits 0, plain exits 1, both say why."""
    for tool in ("bash", "id", "head"):
        os.symlink(shutil.which(tool) or tool, tmp_path / tool)
    env = {"PATH": str(tmp_path)}
    soft = subprocess.run([str(tmp_path / "bash"), INSTALL, "--if-possible"], env=env, capture_output=True,
                          text=True, check=False)
    hard = subprocess.run([str(tmp_path / "bash"), INSTALL], env=env, capture_output=True, text=True,
                          check=False)
    assert (soft.returncode, hard.returncode) == (0, 1)
    assert "apt-get is not available" in soft.stderr and "apt-get install" in hard.stderr
