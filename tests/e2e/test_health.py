"""scripts.serve.health against a real TorchServe with token authorization on, as in production.

Its management keys expire after 6 s (token_expiration_min=0.1), so the check passes
at all only if it renews an expired key; one test shows an old key really is refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests

from scripts.client.rest import KeyFile, TorchServeClient
from scripts.operate.drain import draining_marker
from scripts.serve import health
from scripts.serve.keeper import expirations
from scripts.serve.local import LocalServer

pytestmark = pytest.mark.e2e
EXPIRY_MINUTES = 0.1


def check(server: LocalServer, live: bool = False) -> tuple[bool, str]:
    return health.check(server.workdir / "config.properties", server.workdir, live=live, timeout=10,
                        environ={})


def wait_until(server: LocalServer, healthy: bool, seconds: float = 300) -> str:
    deadline = time.monotonic() + seconds
    while True:
        state, line = check(server)
        if state == healthy:
            return line
        assert server.process.poll() is None, f"TorchServe exited; see {server.workdir}/console.log"
        assert time.monotonic() < deadline, f"still '{line}' after {seconds:.0f} s"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """TorchServe serving tabular with token auth on; started here rather than by LocalServer.start,
    whose own readiness wait would stall once its keys expire."""
    workdir = tmp_path_factory.mktemp("health")
    launched = LocalServer.launch(workdir, Path("model_store").resolve(), ["tabular.mar"], {
        "disable_token_authorization": "false", "enable_model_api": "false",
        "token_expiration_min": str(EXPIRY_MINUTES)})
    with launched as instance:
        wait_until(instance, healthy=True)
        yield instance


def management(server: LocalServer) -> TorchServeClient:
    """A client with a management key renewed just now (they last 6 s here)."""
    target = health.read_target(server.workdir / "config.properties", {})
    health.renew_management_key(target, health.read_keys(server.workdir), timeout=10)
    return TorchServeClient(server.inference_url, server.management_url, KeyFile.read(server.key_file),
                            timeout=120)


def test_ready_when_every_model_has_a_ready_worker(server: LocalServer) -> None:
    assert check(server) == (True, "ready: tabular (1 READY)")


def test_not_ready_while_a_model_has_no_ready_worker_yet_live(server: LocalServer) -> None:
    with management(server) as client:
        client.scale("tabular", min_workers=0, max_workers=0)
    try:
        assert check(server) == (False, "not ready: tabular has 0 READY of 0 workers")
        healthy, line = check(server, live=True)
        assert healthy and line.startswith(f"live: TorchServe answers at {server.management_url}")
    finally:
        with management(server) as client:
            client.scale("tabular", min_workers=1, max_workers=1)
    assert wait_until(server, healthy=True) == "ready: tabular (1 READY)"


def test_an_expired_management_key_is_renewed(server: LocalServer) -> None:
    keys = KeyFile.read(server.key_file)
    expires = expirations(json.loads(server.key_file.read_text()))["management"]
    time.sleep(max(0.0, (expires - datetime.now(timezone.utc)).total_seconds()) + 0.5)
    refused = requests.get(f"{server.management_url}/models", timeout=10,
                           headers={"Authorization": f"Bearer {keys.management}"})
    assert refused.status_code == 400 and "Token Authorization failed" in refused.text  # really expired
    assert check(server) == (True, "ready: tabular (1 READY)")
    assert KeyFile.read(server.key_file).management != keys.management


def test_draining_is_not_ready_but_live(server: LocalServer) -> None:
    marker = draining_marker(server.workdir)
    marker.write_text("draining\n")
    try:
        assert check(server) == \
            (False, "not ready: draining (the server finishes what it accepted, then stops)")
        assert check(server, live=True)[0]
    finally:
        marker.unlink()
    assert check(server)[0]


def test_the_command_line(server: LocalServer) -> None:
    command = [sys.executable, "-m", "scripts.serve.health", "--server-dir", str(server.workdir)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "TS_CONFIG_FILE": str(server.workdir / "config.properties")})
    assert (result.returncode, result.stdout) == (0, "ready: tabular (1 READY)\n")
