"""Bad archives against a real TorchServe: refused before TorchServe sees them, named when they
cannot load, and what TorchServe itself does with one it registered anyway.

TorchServe 0.12 registers a .mar cut off before its manifest (the zip's last member, so the
extracted folder has none), and its workers die in a loop with ModuleNotFoundError;
/ping stays "Healthy" and a prediction to it gets no answer. `make serve` checks every
archive first, and names a model that cannot load (here: a sound zip with damaged
weights) as soon as its worker dies, instead of waiting out its timeout.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from scripts.build.store import MANIFEST
from scripts.client.rest import KeyFile, TorchServeClient
from scripts.serve.local import LocalServer
from scripts.serve.server import wait_until_ready
from scripts.serve.startup import CannotLoad, LoadWatch
from tests.e2e.cli import tsctl
from tests.e2e.test_startup import ROOT, ServeDir

pytestmark = pytest.mark.e2e
GOOD = ROOT / "model_store/tabular.mar"
STARTUP_TIMEOUT = 120  # tabular's, so broken's: a model named before it was named on evidence
CLIENT_TIMEOUT = 2.0  # a good prediction answers in milliseconds here


def truncated(target: Path) -> Path:
    """What a copy interrupted between two members leaves: tabular.mar up to its manifest, the last
    member. (Cut inside a member, TorchServe fails to unzip it and leaves the model out, with only a
    WARN in ts_log.log.)"""
    with zipfile.ZipFile(GOOD) as good:
        cut = good.getinfo(MANIFEST).header_offset
    target.write_bytes(GOOD.read_bytes()[:cut])
    return target


def unloadable(target: Path, name: str = "broken") -> Path:
    """A sound archive of model `name` whose weights are garbage: it passes the archive check and its
    handler's initialize() raises, so every worker dies while loading."""
    with zipfile.ZipFile(GOOD) as good, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as bad:
        for member in good.namelist():
            data = good.read(member)
            if member == "tabular.safetensors":
                data = b"these are not safetensors " * 40
            elif member == MANIFEST:
                manifest = json.loads(data)
                manifest["model"]["modelName"] = name
                data = json.dumps(manifest).encode()
            bad.writestr(member, data)
    return target


@pytest.fixture()
def serve_dir(tmp_path: Path) -> Iterator[ServeDir]:
    store = tmp_path / "store"
    store.mkdir()
    shutil.copyfile(GOOD, store / "tabular.mar")
    place = ServeDir.create(tmp_path, store)
    try:
        yield place
    finally:
        place.clean_up()


def test_a_damaged_archive_stops_the_start_before_torchserve_starts(serve_dir: ServeDir) -> None:
    store = Path(serve_dir.properties["model_store"])
    truncated(store / "broken.mar")
    refused = serve_dir.start()
    assert refused.code == 2, refused.text
    assert f"{store / 'broken.mar'}: not a readable zip" in refused.text and "make archive" in refused.text
    assert "TorchServe was not started" in refused.text
    assert not serve_dir.pid_file.exists() and not serve_dir.running()


def test_a_model_that_cannot_load_is_named_when_its_worker_dies_and_the_server_stopped(
        serve_dir: ServeDir) -> None:
    unloadable(Path(serve_dir.properties["model_store"]) / "broken.mar")
    failed = serve_dir.start()
    assert failed.code == 1, failed.text
    named = failed.when("error: broken cannot load: its worker died while loading")
    print(f"\ncannot-load: broken named at {named:.1f} s, exit at {failed.seconds:.1f} s; the old start "
          f"waited its whole timeout (122 s in the issue)")
    assert named < STARTUP_TIMEOUT, failed.text  # on evidence, not on its startupTimeout
    report = failed.text[failed.text.index("error: broken cannot load"):]
    assert "the last lines its workers wrote to logs/model_log.log" in report
    assert "Traceback" in report or "Error" in report  # the handler's own reason
    assert "stopped: nothing of it is left running" in report
    assert not serve_dir.pid_file.exists() and not serve_dir.running()


@pytest.fixture(scope="module")
def registered_anyway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """TorchServe started directly (no `make serve` check) on tabular and a truncated broken.mar."""
    workdir = tmp_path_factory.mktemp("registered-anyway")
    store = workdir / "store"
    store.mkdir()
    shutil.copyfile(GOOD, store / "tabular.mar")
    truncated(store / "broken.mar")
    launched = LocalServer.launch(workdir, store, [],
                                  {"load_models": "all", "default_workers_per_model": "1"})
    with launched as server:
        with server.client() as client:
            wait_until_ready(client, ["tabular"], timeout=300, log_hint=workdir / "logs")
        yield server


def health(server: LocalServer) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "scripts.serve.health", "--ts-config",
               str(server.workdir / "config.properties"), "--server-dir", str(server.workdir)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_torchserve_registers_a_damaged_archive_and_its_workers_never_become_ready(
        registered_anyway: LocalServer) -> None:
    watch = LoadWatch(model_log=registered_anyway.workdir / "logs" / "model_log.log", whole_log=True)
    with registered_anyway.client() as client:
        assert {entry["modelName"] for entry in client.list_models()} == {"broken", "tabular"}
        with pytest.raises(CannotLoad, match="^broken cannot load: its worker died while loading") as named:
            wait_until_ready(client, ["broken"], timeout=60, log_hint=registered_anyway.workdir / "logs",
                             watch=watch)
        statuses = {worker["status"] for worker in client.describe("broken")[0]["workers"]}
    assert statuses and "READY" not in statuses
    assert any("ModuleNotFoundError" in line for line in named.value.log), named.value.log
    # TorchServe's own health check does not see it (the "/ping stays Healthy")
    ping = requests.get(f"{registered_anyway.inference_url}/ping", timeout=30)
    assert ping.status_code == 200 and ping.json()["status"] == "Healthy"


def test_readiness_names_the_model_that_never_becomes_ready(registered_anyway: LocalServer) -> None:
    checked = health(registered_anyway)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert checked.stdout.startswith("not ready") and "broken" in checked.stdout
    assert "tabular" not in checked.stdout.split("not ready", 1)[1].split("broken")[0]  # only broken named


def test_a_prediction_to_it_gets_no_answer_so_the_client_timeout_ends_it(
        registered_anyway: LocalServer) -> None:
    """TorchServe queues the request for a worker that never comes: no status, no error. Only the
    client's own timeout ends the wait (documented in docs/operations.md)."""
    client = TorchServeClient(registered_anyway.inference_url, registered_anyway.management_url, KeyFile(),
                              timeout=CLIENT_TIMEOUT)
    began = time.monotonic()
    with client, pytest.raises(requests.Timeout):
        client.predict("broken", (ROOT / "build/examples/tabular.json").read_bytes(), "application/json")
    waited = time.monotonic() - began
    assert CLIENT_TIMEOUT <= waited < 2 * CLIENT_TIMEOUT  # one wait: a prediction is never re-sent
    with registered_anyway.client() as good:
        answer = good.predict("tabular", (ROOT / "build/examples/tabular.json").read_bytes(),
                              "application/json")
    assert answer.status_code == 200  # the good model is fine


def test_tsctl_register_refuses_damaged_and_foreign_archives_before_torchserve_sees_them(
        registered_anyway: LocalServer) -> None:
    store = Path(registered_anyway.properties["model_store"])
    truncated(store / "damaged.mar")
    with zipfile.ZipFile(store / "foreign.mar", "w") as foreign:
        foreign.writestr("model.safetensors", b"\0" * 64)
    for file, fault in [("damaged.mar", "not a readable zip"), ("foreign.mar", f"a zip without {MANIFEST}")]:
        refused = tsctl(registered_anyway.workdir, "register", str(store / file), timeout=120)
        assert refused.returncode == 2, refused.stderr
        assert f"error: {store / file}: {fault}" in refused.stderr and "fix:" in refused.stderr
    with registered_anyway.client() as client:
        assert {entry["modelName"] for entry in client.list_models()} == {"broken", "tabular"}
