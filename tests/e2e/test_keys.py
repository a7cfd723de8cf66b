"""Production keys and health against a real TorchServe with token authorization on.

- Keys expire after `token_expiration_min`; here 0.1 minutes (6 s, as in test_health.py;
  the keeper's rule, renew at half-life, is the same for any lifetime). With the keeper
  beside TorchServe (scripts/serve/keeper.py, which `make serve` starts), a client that
  reads its key from key_file.json (TorchServeClient, tsctl) answers 200 for three
  lifetimes of the first keys.
- The keeper's /ready and /live need no key, while TorchServe's own /ping does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from scripts.client.rest import KeyFile, TorchServeClient
from scripts.operate.drain import draining_marker
from scripts.serve.local import LocalServer, free_port
from tests.conftest import FIGURES, ROOT
from tests.e2e.cli import tsctl

pytestmark = pytest.mark.e2e
STORE = Path("model_store").resolve()
EXPIRY_MINUTES = 0.1
SOAK_SECONDS = 3 * EXPIRY_MINUTES * 60  # three lifetimes
TABULAR = Path("build/examples/tabular.json")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """TorchServe serving tabular with token authorization on and 6 s keys. Launched, not started by
    LocalServer.start, whose readiness wait would stall once its keys expire: the keeper fixture renews
    them from the start and waits until the keeper says ready, as `make serve` does."""
    extra = {"disable_token_authorization": "false", "token_expiration_min": str(EXPIRY_MINUTES)}
    with LocalServer.launch(tmp_path_factory.mktemp("keys"), STORE, ["tabular.mar"], extra) as instance:
        yield instance


@pytest.fixture(scope="module")
def keeper(server: LocalServer) -> Iterator[str]:
    """The keeper, as `make serve` starts it; yields its health URL once it says ready."""
    address = f"127.0.0.1:{free_port()}"
    with (server.workdir / "keeper.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "scripts.serve.keeper", "--ts-config",
             str(server.workdir / "config.properties"), "--server-dir", str(server.workdir),
             "--health-address", address],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://{address}"
    try:
        deadline = time.monotonic() + 300
        while readiness(url) != 200:
            assert process.poll() is None, (server.workdir / "keeper.log").read_text()
            assert server.process.poll() is None, f"TorchServe exited; see {server.workdir}/console.log"
            assert time.monotonic() < deadline, f"not ready within 300 s; see {server.workdir}/logs"
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def readiness(keeper: str) -> int | None:
    """The keeper's /ready status; None while it does not answer yet."""
    try:
        return requests.get(f"{keeper}/ready", timeout=5).status_code
    except requests.ConnectionError:
        return None


def test_health_needs_no_key_while_ping_does(server: LocalServer, keeper: str) -> None:
    ping = requests.get(f"{server.inference_url}/ping", timeout=10)
    assert ping.status_code == 400 and "Token Authorization failed" in ping.text
    ready = requests.get(f"{keeper}/ready", timeout=10)
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert "tabular (1 READY)" in ready.json()["detail"]
    assert requests.get(f"{keeper}/live", timeout=10).json()["live"] is True
    # key_file.json holds {"management": {"key": ...}, "inference": {...}, "API": {...}}
    keys = [entry["key"] for entry in json.loads(server.key_file.read_text()).values() if "key" in entry]
    assert len(keys) >= 2 and not any(key in ready.text for key in keys)
    draining_marker(server.workdir).write_text("draining\n")
    try:
        deadline = time.monotonic() + 5  # the keeper caches its answer for a second
        while (drained := requests.get(f"{keeper}/ready", timeout=10)).status_code == 200:
            assert time.monotonic() < deadline, "still ready 5 s after the drain began"
            time.sleep(0.1)
        assert drained.status_code == 503 and "draining" in drained.json()["detail"]
        assert requests.get(f"{keeper}/live", timeout=10).status_code == 200
    finally:
        draining_marker(server.workdir).unlink()


def test_clients_answer_200_for_three_key_lifetimes(server: LocalServer, keeper: str) -> None:
    first = KeyFile.read(server.key_file)
    body = TABULAR.read_bytes()
    statuses: Counter[int] = Counter()
    inference_keys = {first.inference}
    with TorchServeClient(server.inference_url, server.management_url, KeyFile.read(server.key_file),
                          metrics_url=server.metrics_url) as client:
        deadline = time.monotonic() + SOAK_SECONDS
        while time.monotonic() < deadline:
            statuses[client.predict("tabular", body, "application/json", check=False).status_code] += 1
            inference_keys.add(client.keys.inference)
            time.sleep(0.2)
        assert client.describe("tabular")[0]["modelVersion"] == "1.0"  # the management key, renewed too
    assert statuses and set(statuses) == {200}, statuses
    assert len(inference_keys) >= 3, "the inference key was never renewed: the test proves nothing"
    stale = requests.post(f"{server.inference_url}/predictions/tabular", data=body, timeout=10,
                          headers={"Content-Type": "application/json",
                                   "Authorization": f"Bearer {first.inference}"})
    assert stale.status_code == 400  # the first key is dead: the client lived through its expiry
    status = tsctl(server.workdir, "status", timeout=60)
    assert status.returncode == 0 and "tabular" in status.stdout, status.stderr
    FIGURES[f"keys, token_expiration_min={EXPIRY_MINUTES}"] = (
        f"{sum(statuses.values())} predictions over {SOAK_SECONDS:.0f} s, all 200; "
        f"{len(inference_keys)} inference keys seen (renewed at half-life by the keeper)")
