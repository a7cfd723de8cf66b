"""scripts.serve.health without a TorchServe: where it looks, and what it says when it cannot check.

The checks against a real server are in tests/e2e/test_health.py and tests/image/.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.operate.drain import draining_marker
from scripts.serve import health
from scripts.serve.local import free_port


def properties(path: Path, **values: str) -> Path:
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    return path


def test_a_missing_properties_file_names_the_path_and_the_fix(tmp_path: Path) -> None:
    healthy, line = health.check(tmp_path / "nope.properties", tmp_path, live=False, timeout=1, environ={})
    assert not healthy
    assert str(tmp_path / "nope.properties") in line and "--ts-config" in line and "TS_CONFIG_FILE" in line


def test_the_command_line_prints_one_line_and_exits_1(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "scripts.serve.health", "--server-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert result.stdout.count("\n") == 1 and "config.properties" in result.stdout  # DIR/config.properties


def test_a_wildcard_address_is_called_on_loopback(tmp_path: Path) -> None:
    config = properties(tmp_path / "c.properties", management_address="http://0.0.0.0:8181")
    assert health.read_target(config, {}) == health.Target("http://127.0.0.1:8181", token_auth=True)


def test_token_auth_is_on_unless_disabled(tmp_path: Path) -> None:
    config = properties(tmp_path / "c.properties", disable_token_authorization="true")
    assert health.read_target(config, {}) == health.Target(health.DEFAULT_MANAGEMENT, token_auth=False)


def test_environment_overrides_apply_only_with_enable_envvars_config(tmp_path: Path) -> None:
    environ = {"TS_MANAGEMENT_ADDRESS": "http://127.0.0.1:9999", "TS_DISABLE_TOKEN_AUTHORIZATION": "true"}
    plain = properties(tmp_path / "a.properties", management_address="http://127.0.0.1:8081")
    assert health.read_target(plain, environ).management_url == "http://127.0.0.1:8081"
    enabled = properties(tmp_path / "b.properties", management_address="http://127.0.0.1:8081",
                         enable_envvars_config="true")
    assert health.read_target(enabled, environ) == health.Target("http://127.0.0.1:9999", token_auth=False)


def test_dollar_dollar_references_are_resolved_or_named(tmp_path: Path) -> None:
    config = properties(tmp_path / "c.properties", management_address="http://127.0.0.1:$$MGMT_PORT$$")
    assert health.read_target(config, {"MGMT_PORT": "7001"}).management_url == "http://127.0.0.1:7001"
    with pytest.raises(health.HealthError, match=r"key 'management_address' names \$MGMT_PORT\$"):
        health.read_target(config, {})


@pytest.mark.parametrize("address", ["unix:/tmp/management.sock", "127.0.0.1:8081", "http://"])
def test_an_address_that_is_not_http_names_the_key_and_the_fix(tmp_path: Path, address: str) -> None:
    config = properties(tmp_path / "c.properties", management_address=address)
    with pytest.raises(health.HealthError, match="key 'management_address'.*fix: e.g. management_address="):
        health.read_target(config, {})


def test_token_auth_without_a_key_file_names_the_file_and_server_dir(tmp_path: Path) -> None:
    config = properties(tmp_path / "c.properties", management_address=f"http://127.0.0.1:{free_port()}")
    healthy, line = health.check(config, tmp_path, live=False, timeout=1, environ={})
    assert not healthy
    assert str((tmp_path / "key_file.json").resolve()) in line and "--server-dir" in line


def test_a_key_file_that_is_not_torchserves_is_named(tmp_path: Path) -> None:
    config = properties(tmp_path / "c.properties", management_address=f"http://127.0.0.1:{free_port()}")
    (tmp_path / "key_file.json").write_text(json.dumps({"inference": {"key": "x"}}))
    healthy, line = health.check(config, tmp_path, live=False, timeout=1, environ={})
    assert not healthy and "key_file.json is not TorchServe's key file" in line


@pytest.mark.parametrize("live", [False, True])
def test_nothing_listening_is_not_ready_and_not_live(tmp_path: Path, live: bool) -> None:
    config = properties(tmp_path / "c.properties", management_address=f"http://127.0.0.1:{free_port()}",
                        disable_token_authorization="true")
    healthy, line = health.check(config, tmp_path, live=live, timeout=1, environ={})
    assert not healthy
    assert line == f"{'not live' if live else 'not ready'}: TorchServe does not answer " \
                   "(ConnectionError: Connection refused)"


def test_draining_is_not_ready_before_any_call(tmp_path: Path) -> None:
    """The marker alone decides: nothing listens on the port, yet the answer names the drain."""
    config = properties(tmp_path / "c.properties", management_address=f"http://127.0.0.1:{free_port()}")
    draining_marker(tmp_path).write_text("draining\n")
    healthy, line = health.check(config, tmp_path, live=False, timeout=1, environ={})
    assert (healthy, line) == \
        (False, "not ready: draining (the server finishes what it accepted, then stops)")
