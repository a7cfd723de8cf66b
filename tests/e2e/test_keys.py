"""Production keys and health against a real TorchServe with token authorization on.

- Keys expire after `token_expiration_min`; here 1 minute. With the keeper beside
  TorchServe (scripts/serve/keeper.py, which `make serve` starts), a client that
  reads its key from key_file.json (TorchServeClient, tsctl) answers 200 for three
  minutes: three lifetimes of the first keys.
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

pytestmark = pytest.mark.e2e
STORE = Path("model_store").resolve()
SOAK_SECONDS = 180
TABULAR = Path("build/examples/tabular.json")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    extra = {"disable_token_authorization": "false", "token_expiration_min": "1"}
    with LocalServer.start(tmp_path_factory.mktemp("keys"), STORE, ["tabular"], extra=extra) as instance:
        yield instance


@pytest.fixture(scope="module")
def keeper(server: LocalServer) -> Iterator[str]:
    """The keeper, as `make serve` starts it; yields its health URL."""
    address = f"127.0.0.1:{free_port()}"
    with (server.workdir / "keeper.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "scripts.serve.keeper", "--ts-config",
             str(server.workdir / "config.properties"), "--server-dir", str(server.workdir),
             "--health-address", address],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://{address}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{url}/live", timeout=2)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline and process.poll() is None, (
                    (server.workdir / "keeper.log").read_text())
                time.sleep(0.2)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


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
        time.sleep(1.2)  # past the keeper's one-second cache
        drained = requests.get(f"{keeper}/ready", timeout=10)
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
            time.sleep(0.5)
        assert client.describe("tabular")[0]["modelVersion"] == "1.0"  # the management key, renewed too
    assert statuses and set(statuses) == {200}, statuses
    assert len(inference_keys) >= 3, "the inference key was never renewed: the test proves nothing"
    stale = requests.post(f"{server.inference_url}/predictions/tabular", data=body, timeout=10,
                          headers={"Content-Type": "application/json",
                                   "Authorization": f"Bearer {first.inference}"})
    assert stale.status_code == 400  # the first key is dead: the client lived through its expiry
    tsctl = subprocess.run([sys.executable, "-m", "scripts.operate.tsctl", "--ts-config",
                            str(server.workdir / "config.properties"), "--server-dir", str(server.workdir),
                            "status"], capture_output=True, text=True, timeout=60, check=False)
    assert tsctl.returncode == 0 and "tabular" in tsctl.stdout, tsctl.stderr
    FIGURES["keys, token_expiration_min=1"] = (
        f"{sum(statuses.values())} predictions over {SOAK_SECONDS} s, all 200; "
        f"{len(inference_keys)} inference keys seen (renewed at half-life by the keeper)")
