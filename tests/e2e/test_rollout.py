"""Rollout and rollback against a real TorchServe under configs/production.properties, under live load.

The server runs with the production file's own values (tests/e2e/shipped.py): token
authorization on, the model API on, allowed_urls locked to the store; only its ports,
store and paths are its own. Each test gets its own server and a private copy of the
model store (a rollout rewrites model_store/NAME.mar), builds the new version with the real archive step,
and drives the real CLI (`python -m scripts.operate.tsctl`) while locust keeps
/predictions/tabular busy and records which version answered every request.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from scripts.build import archive
from scripts.build import store as layout
from scripts.build.store import read_archive
from scripts.serve.local import LocalServer
from tests.conftest import FIGURES
from tests.e2e.shipped import PRODUCTION as PRODUCTION_FILE
from tests.e2e.shipped import shipped_properties
from tests.load import BackgroundLoad

pytestmark = pytest.mark.e2e
TABULAR_YAML = Path("configs/models/tabular.yaml")
PRODUCTION = shipped_properties(PRODUCTION_FILE)


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    """A private model store holding tabular 1.0, as `make archive` leaves it."""
    store = tmp_path / "store"
    (store / layout.VERSIONS).mkdir(parents=True)
    shutil.copyfile(Path("model_store/tabular.mar"), store / "tabular.mar")
    shutil.copyfile(Path("model_store/tabular.mar"), layout.version_archive(store, "tabular", "1.0"))
    assert read_archive(store / "tabular.mar").version == "1.0"
    return store


def start(tmp_path: Path, store: Path, extra: dict[str, str]) -> LocalServer:
    return LocalServer.start(tmp_path / "server", store, ["tabular"], extra=extra)


@pytest.fixture()
def server(tmp_path: Path, store: Path) -> Iterator[LocalServer]:
    with start(tmp_path, store, PRODUCTION) as instance:
        yield instance


def build_version(tmp_path: Path, store: Path, version: str, swap_labels: bool = False) -> Path:
    """`make archive` of tabular at `version`; swap_labels makes a model that is wrong on purpose."""
    text = TABULAR_YAML.read_text().replace('version: "1.0"', f'version: "{version}"')
    if swap_labels:
        text = text.replace("class_names: [malignant, benign]", "class_names: [benign, malignant]")
    config = tmp_path / f"tabular-{version}.yaml"
    config.write_text(text)
    assert archive.main([str(config), "--store", str(store)]) == 0
    assert read_archive(store / "tabular.mar").version == version
    return config


def tsctl(server: LocalServer, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "scripts.operate.tsctl",
               "--ts-config", str(server.workdir / "config.properties"), "--server-dir", str(server.workdir),
               "--log", str(server.workdir / "rollout.jsonl"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)


def under_load(server: LocalServer, tmp_path: Path, seconds: float) -> BackgroundLoad:
    """locust on /predictions/tabular in the background, with the inference key; every reply recorded."""
    token = json.loads(server.key_file.read_text())["inference"]["key"]
    return BackgroundLoad.start(server.inference_url, "tabular", tmp_path, seconds, token=token)


def steps(server: LocalServer) -> list[dict[str, object]]:
    return [json.loads(line) for line in (server.workdir / "rollout.jsonl").read_text().splitlines()]


def when(step: dict[str, object]) -> float:
    return datetime.fromisoformat(str(step["time"])).timestamp()


def test_rollout_then_rollback_under_load_drops_no_request(server: LocalServer, store: Path,
                                                           tmp_path: Path) -> None:
    assert server.key_file.is_file()  # token authorization on, as the production file says
    assert server.properties["enable_model_api"] == "true" and server.properties["allowed_urls"]
    config = build_version(tmp_path, store, "2.0")
    load = under_load(server, tmp_path, seconds=60)  # a rollout took up to 25 s here on a busy machine
    with load:
        began = time.monotonic()
        forward = tsctl(server, "rollout", "tabular", "2.0", "--config", str(config))
        rollout_s = time.monotonic() - began
        assert forward.returncode == 0, forward.stderr
        time.sleep(4)  # traffic on 2.0
        began = time.monotonic()
        back = tsctl(server, "rollback", "tabular")
        rollback_s = time.monotonic() - began
        assert back.returncode == 0, back.stderr
        time.sleep(4)  # traffic on 1.0 again
        result = load.result()
    assert server.process.poll() is None  # the same server throughout: no restart
    log = steps(server)
    assert [s["step"] for s in log] == ["start", "register", "ready", "gate", "default", "done",
                                        "start", "ready", "default", "archive", "done"]
    gated, switched, rolled_back = when(log[3]), when(log[4]), when(log[8])
    answered = load.replies()
    assert result.failures == 0 and answered and all(r.status == 200 for r in answered)
    assert max(r.sent for r in answered) > rolled_back + 2, "the load ended before the rollback: lengthen it"
    # which version answered: 1.0 until the switch, 2.0 between, 1.0 after the rollback
    assert {r.version for r in answered if r.answered < gated} == {"1.0"}
    assert {r.version for r in answered if switched + 0.05 < r.sent and r.answered < when(log[6])} == {"2.0"}
    assert {r.version for r in answered if r.sent > rolled_back + 0.05} == {"1.0"}
    FIGURES["rollout + rollback under load, production properties"] = (
        f"{len(answered)} requests from 6 locust users, {result.failures} failed; tsctl rollout "
        f"{rollout_s:.1f} s, rollback {rollback_s:.1f} s, no restart")
    assert read_archive(store / "tabular.mar").version == "1.0"  # a restart serves the default
    with server.client() as client:
        assert sorted(v["modelVersion"] for v in client.describe("tabular", "all")) == ["1.0", "2.0"]


def test_a_bad_version_is_refused_by_the_gate_and_never_serves(server: LocalServer, store: Path,
                                                               tmp_path: Path) -> None:
    config = build_version(tmp_path, store, "2.0", swap_labels=True)
    load = under_load(server, tmp_path, seconds=15)
    with load:
        refused = tsctl(server, "rollout", "tabular", "2.0", "--config", str(config))
        result = load.result()
    assert refused.returncode == 1, refused.stderr
    assert "below min_accuracy" in refused.stderr and "1.0 stays the default" in refused.stderr
    answered = load.replies()
    assert result.failures == 0 and {(r.status, r.version) for r in answered} == {(200, "1.0")}
    registered = next(s for s in steps(server) if s["step"] == "register")
    assert max(r.answered for r in answered) > when(registered)  # the load saw the candidate's lifetime
    gate = next(s for s in steps(server) if s["step"] == "gate")
    assert gate["passed"] is False and float(gate["accuracy"]) < 0.5  # type: ignore[arg-type]
    with server.client() as client:
        assert [v["modelVersion"] for v in client.describe("tabular", "all")] == ["1.0"]
    assert read_archive(store / "tabular.mar").version == "1.0"
    assert read_archive(layout.version_archive(store, "tabular", "2.0")).version == "2.0"  # nothing lost


def test_without_the_model_api_or_the_key_the_cli_says_what_to_do(tmp_path: Path, store: Path) -> None:
    with start(tmp_path, store, {**PRODUCTION, "enable_model_api": "false"}) as server:
        config = build_version(tmp_path, store, "2.0")
        status = tsctl(server, "--json", "status")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["tabular"]["default"] == "1.0"

        no_key = tsctl(server, "--key-file", str(tmp_path / "missing.json"), "status")
        assert no_key.returncode == 4 and f"keys tried: {tmp_path / 'missing.json'}" in no_key.stderr

        off = tsctl(server, "rollout", "tabular", "2.0", "--config", str(config))
        assert off.returncode == 5 and "enable_model_api=true" in off.stderr
        with server.client() as client:
            assert [v["modelVersion"] for v in client.describe("tabular", "all")] == ["1.0"]
        assert read_archive(store / "tabular.mar").version == "1.0"

        nothing = tsctl(server, "rollback", "tabular")
        assert nothing.returncode == 1 and "nothing to roll back to" in nothing.stderr


def test_rollouts_keep_the_newest_three_versions_and_never_the_default(server: LocalServer, store: Path,
                                                                       tmp_path: Path) -> None:
    for version in ("2.0", "3.0", "4.0", "1.5"):  # 1.5: a hotfix older than what is registered
        rolled = tsctl(server, "rollout", "tabular", version, "--config",
                       str(build_version(tmp_path, store, version)))
        assert rolled.returncode == 0, rolled.stderr
    pruned = [s["version"] for s in steps(server) if s["step"] == "prune"]
    assert pruned == ["1.0"]  # pruned by the rollout of 4.0; 1.5 stays, being the default
    shown = json.loads(tsctl(server, "--json", "versions", "tabular").stdout)
    assert shown["default"] == "1.5" and sorted(shown["versions"]) == ["1.5", "2.0", "3.0", "4.0"]
    # rollback goes back through the rollouts: 1.5 -> 4.0 (its previous default) -> 3.0
    assert tsctl(server, "rollback", "tabular").returncode == 0
    assert tsctl(server, "rollback", "tabular").returncode == 0
    assert read_archive(store / "tabular.mar").version == "3.0"
    assert tsctl(server, "rollback", "tabular", "--to", "9.9").returncode == 1  # not registered
