"""Rollout and rollback against a real TorchServe under configs/production.properties, under live load.

The server runs with the production file's own values (tests/e2e/shipped.py): token
authorization on, the model API on, allowed_urls locked to the store; only its ports,
store and paths are its own. One server serves the module from a private copy of the
model store (a rollout rewrites model_store/NAME.mar); each test finds it as a start
leaves it (tabular 1.0 alone) and leaves it so. Each test builds the new version with
the real archive step, and drives the real CLI (`python -m scripts.operate.tsctl`)
while locust keeps /predictions/tabular busy and records which version answered every request.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from scripts.build import store as layout
from scripts.build.store import read_archive
from scripts.serve.local import LocalServer
from scripts.serve.server import wait_until_ready
from tests.conftest import FIGURES
from tests.e2e.cli import tsctl
from tests.e2e.shipped import PRODUCTION as PRODUCTION_FILE
from tests.e2e.shipped import shipped_properties
from tests.e2e.versions import tabular_version
from tests.load import BackgroundLoad, Reply

pytestmark = pytest.mark.e2e
PRODUCTION = shipped_properties(PRODUCTION_FILE)
TRAFFIC = 100  # requests each version must answer under load before the next switch


def fresh_store(store: Path) -> Path:
    """A private model store holding tabular 1.0, as `make archive` leaves it."""
    shutil.rmtree(store, ignore_errors=True)
    (store / layout.VERSIONS).mkdir(parents=True)
    shutil.copyfile(Path("model_store/tabular.mar"), store / "tabular.mar")
    shutil.copyfile(Path("model_store/tabular.mar"), layout.version_archive(store, "tabular", "1.0"))
    assert read_archive(store / "tabular.mar").version == "1.0"
    return store


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    root = tmp_path_factory.mktemp("rollout")
    with LocalServer.start(root / "server", fresh_store(root / "store"), ["tabular"],
                           extra=PRODUCTION) as instance:
        yield instance


@pytest.fixture()
def server(production: LocalServer) -> Iterator[LocalServer]:
    """The module's server serving tabular 1.0 alone; put back so after the test, whatever it did."""
    yield production
    store = fresh_store(Path(production.properties["model_store"]))
    with production.client() as client:
        registered = {entry["modelVersion"] for entry in client.describe("tabular", "all")}
        if "1.0" not in registered:  # pruned by the test's rollouts
            client.register("tabular.mar")
        client.set_default("tabular", "1.0")
        for version in registered - {"1.0"}:
            client.unregister("tabular", version)
        assert [entry["modelVersion"] for entry in client.describe("tabular", "all")] == ["1.0"]
        wait_until_ready(client, ["tabular"], timeout=120, log_hint=production.workdir / "logs")
    assert read_archive(store / "tabular.mar").version == "1.0"


@pytest.fixture()
def store(server: LocalServer) -> Path:
    return Path(server.properties["model_store"])


def steps(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def when(step: dict[str, object]) -> float:
    return datetime.fromisoformat(str(step["time"])).timestamp()


def sent_after(replies: list[Reply], moment: float) -> int:
    return sum(reply.sent > moment for reply in replies)


def test_rollout_then_rollback_under_load_drops_no_request(server: LocalServer, store: Path,
                                                           tmp_path: Path) -> None:
    assert server.key_file.is_file()  # token authorization on, as the production file says
    assert server.properties["enable_model_api"] == "true" and server.properties["allowed_urls"]
    config = tabular_version(tmp_path, store, "2.0")
    rollout_log = tmp_path / "rollout.jsonl"
    # at most 120 s (a rollout took up to 25 s here on a busy machine); stopped once both versions served
    with BackgroundLoad.start(server, "tabular", tmp_path, seconds=120) as load:
        began = time.monotonic()
        forward = tsctl(server.workdir, "rollout", "tabular", "2.0", "--config", str(config), log=rollout_log)
        rollout_s = time.monotonic() - began
        assert forward.returncode == 0, forward.stderr
        switched = when(next(s for s in steps(rollout_log) if s["step"] == "default"))
        load.wait_for(lambda replies: sent_after(replies, switched + 0.05) >= TRAFFIC, "traffic on 2.0")
        began = time.monotonic()
        back = tsctl(server.workdir, "rollback", "tabular", log=rollout_log)
        rollback_s = time.monotonic() - began
        assert back.returncode == 0, back.stderr
        rolled_back = when(steps(rollout_log)[8])
        load.wait_for(lambda replies: sent_after(replies, rolled_back + 0.05) >= TRAFFIC,
                      "traffic on 1.0 again")
        result = load.stop()
    assert server.process.poll() is None  # the same server throughout: no restart
    log = steps(rollout_log)
    assert [s["step"] for s in log] == ["start", "register", "ready", "gate", "default", "done",
                                        "start", "ready", "default", "archive", "done"]
    gated, switched, rolled_back = when(log[3]), when(log[4]), when(log[8])
    answered = load.replies()
    assert result.failures == 0 and answered and all(r.status == 200 for r in answered)
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
    config = tabular_version(tmp_path, store, "2.0", swap_labels=True)
    rollout_log = tmp_path / "rollout.jsonl"
    # at most 120 s: stopped when the rollout is refused
    with BackgroundLoad.start(server, "tabular", tmp_path, seconds=120) as load:
        refused = tsctl(server.workdir, "rollout", "tabular", "2.0", "--config", str(config), log=rollout_log)
        result = load.stop()
    assert refused.returncode == 1, refused.stderr
    assert "below min_accuracy" in refused.stderr and "1.0 stays the default" in refused.stderr
    answered = load.replies()
    assert result.failures == 0 and {(r.status, r.version) for r in answered} == {(200, "1.0")}
    registered = next(s for s in steps(rollout_log) if s["step"] == "register")
    assert max(r.answered for r in answered) > when(registered)  # the load saw the candidate's lifetime
    gate = next(s for s in steps(rollout_log) if s["step"] == "gate")
    assert gate["passed"] is False and float(gate["accuracy"]) < 0.5  # type: ignore[arg-type]
    with server.client() as client:
        assert [v["modelVersion"] for v in client.describe("tabular", "all")] == ["1.0"]
    assert read_archive(store / "tabular.mar").version == "1.0"
    assert read_archive(layout.version_archive(store, "tabular", "2.0")).version == "2.0"  # nothing lost


def test_without_the_model_api_or_the_key_the_cli_says_what_to_do(tmp_path: Path) -> None:
    store = fresh_store(tmp_path / "store")
    with LocalServer.start(tmp_path / "server", store, ["tabular"],
                           extra={**PRODUCTION, "enable_model_api": "false"}) as server:
        config = tabular_version(tmp_path, store, "2.0")
        status = tsctl(server.workdir, "--json", "status")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["tabular"]["default"] == "1.0"

        no_key = tsctl(server.workdir, "--key-file", str(tmp_path / "missing.json"), "status")
        assert no_key.returncode == 4 and f"keys tried: {tmp_path / 'missing.json'}" in no_key.stderr

        rollout_log = tmp_path / "rollout.jsonl"
        off = tsctl(server.workdir, "rollout", "tabular", "2.0", "--config", str(config), log=rollout_log)
        assert off.returncode == 5 and "enable_model_api=true" in off.stderr
        with server.client() as client:
            assert [v["modelVersion"] for v in client.describe("tabular", "all")] == ["1.0"]
        assert read_archive(store / "tabular.mar").version == "1.0"

        nothing = tsctl(server.workdir, "rollback", "tabular", log=rollout_log)
        assert nothing.returncode == 1 and "nothing to roll back to" in nothing.stderr


def test_rollouts_keep_the_newest_three_versions_and_never_the_default(server: LocalServer, store: Path,
                                                                       tmp_path: Path) -> None:
    rollout_log = tmp_path / "rollout.jsonl"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return tsctl(server.workdir, *args, log=rollout_log)

    for version in ("2.0", "3.0", "4.0", "1.5"):  # 1.5: a hotfix older than what is registered
        config = tabular_version(tmp_path, store, version)
        rolled = cli("rollout", "tabular", version, "--config", str(config))
        assert rolled.returncode == 0, rolled.stderr
    pruned = [s["version"] for s in steps(rollout_log) if s["step"] == "prune"]
    assert pruned == ["1.0"]  # pruned by the rollout of 4.0; 1.5 stays, being the default
    shown = json.loads(cli("--json", "versions", "tabular").stdout)
    assert shown["default"] == "1.5" and sorted(shown["versions"]) == ["1.5", "2.0", "3.0", "4.0"]
    # rollback goes back through the rollouts: 1.5 -> 4.0 (its previous default) -> 3.0
    assert cli("rollback", "tabular").returncode == 0
    assert cli("rollback", "tabular").returncode == 0
    assert read_archive(store / "tabular.mar").version == "3.0"
    assert cli("rollback", "tabular", "--to", "9.9").returncode == 1  # not registered
