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


def run_helper(path: Path, *args: str, **environ: str) -> subprocess.CompletedProcess[str]:
    """The install helper on a PATH of only `path`, with bash, id and head linked into it."""
    for tool in ("bash", "id", "head"):
        if not (path / tool).exists():
            os.symlink(shutil.which(tool) or tool, path / tool)
    return subprocess.run([str(path / "bash"), INSTALL, *args], env={"PATH": str(path), **environ},
                          capture_output=True, text=True, check=False)


def test_without_apt_the_helper_says_how_to_install(tmp_path: Path) -> None:
    """A PATH with neither prometheus nor apt-get: --if-possible exits 0, plain exits 1, both say why."""
    soft, hard = run_helper(tmp_path, "--if-possible"), run_helper(tmp_path)
    assert (soft.returncode, hard.returncode) == (0, 1)
    assert "apt-get is not available" in soft.stderr and "apt-get install" in hard.stderr


def test_promtool_is_required_too_and_ci_cannot_skip(tmp_path: Path) -> None:
    """prometheus alone is not enough (the adapter rules' test runs promtool); REQUIRE_PROMETHEUS=1,
    which .ci/run exports before `make test`, turns --if-possible into a failure."""
    (tmp_path / "prometheus").write_text("#!/bin/sh\necho 'prometheus, version 2.42.0'\n")
    (tmp_path / "prometheus").chmod(0o755)
    soft = run_helper(tmp_path, "--if-possible")
    assert soft.returncode == 0 and soft.stderr.startswith("promtool not installed"), soft.stderr
    required = run_helper(tmp_path, "--if-possible", REQUIRE_PROMETHEUS="1")
    assert required.returncode == 1 and "promtool not installed" in required.stderr
    ci = Path(".ci/run").read_text()
    assert ci.index("export REQUIRE_PROMETHEUS=1") < ci.index("\nmake test\n")
