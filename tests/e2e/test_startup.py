"""Deterministic startup: after a start and a restart the default the operator chose serves, with
several versions of a model in the store; a model slow to warm up is shown warming and served, and one
whose warm-up cannot fit its startupTimeout is named within it.

Each test runs the real `python -m scripts.serve.server start` (what `make serve` runs)
in a private working directory (its logs/, key_file.json and keeper), with its own
TMPDIR (TorchServe's pid file) and free loopback ports, against a private model store.
Version 2.0 is built with the real archive step (tests/e2e/versions.py), as the rollout tests do.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import yaml

from scripts.build import store as layout
from scripts.build.store import MANIFEST, check_archive, read_archive
from scripts.client.rest import KeyFile, TorchServeClient
from scripts.serve.local import free_port, write_properties
from scripts.serve.server import wait_until_ready
from scripts.serve.startup import CannotLoad, LoadWatch, startup_budgets
from tests.conftest import FIGURES, ROOT
from tests.e2e.cli import tsctl
from tests.e2e.versions import tabular_version

pytestmark = pytest.mark.e2e
SLOW_HANDLER = ROOT / "tests/fixtures/slow_warmup.py"
# The slowed warm-up: longer than the start's interval between warming lines (so one falls inside it,
# whenever the worker comes up), and than tabular and digits take to become READY beside it.
SLOW_WAIT_S = LoadWatch.every + 4
TOO_SLOW_BUDGET = 2  # the startupTimeout of a model whose warm-up waits 60 s


@dataclass
class Started:
    """What one `server start` printed (each line with the seconds since it began) and how it ended."""

    code: int
    lines: list[tuple[float, str]]
    seconds: float

    @property
    def text(self) -> str:
        return "".join(line for _, line in self.lines)

    def when(self, fragment: str) -> float:
        return next(at for at, line in self.lines if fragment in line)


@dataclass
class ServeDir:
    """A private place to run `scripts.serve.server start` and `stop` as `make serve` and `make stop` do."""

    cwd: Path
    properties: dict[str, str]
    groups: list[int] = field(default_factory=list)

    @classmethod
    def create(cls, root: Path, store: Path) -> ServeDir:
        cwd = root / "serve"
        (cwd / "tmp").mkdir(parents=True)
        properties = write_properties(cwd, store, [], {"load_models": "all",
                                                       "default_workers_per_model": "1"})
        return cls(cwd, properties)

    @property
    def env(self) -> dict[str, str]:
        tmp = str(self.cwd / "tmp")  # TEMP: where the frontend unpacks archives (java.io.tmpdir)
        return {**os.environ, "TMPDIR": tmp, "TEMP": tmp, "PYTHONPATH": str(ROOT)}

    @property
    def pid_file(self) -> Path:
        return self.cwd / "tmp" / ".model_server.pid"

    def server(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "scripts.serve.server", *args, "--ts-config",
                str(self.cwd / "config.properties")]

    def start(self, *args: str, timeout: float = 420) -> Started:
        """`server start`, in its own process group (the TorchServe it launches stays in it)."""
        command = self.server("start", *args) + ["--health-address", f"127.0.0.1:{free_port()}"]
        began = time.monotonic()
        process = subprocess.Popen(command, cwd=self.cwd, env=self.env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.groups.append(process.pid)
        lines = []
        assert process.stdout is not None
        for line in process.stdout:  # ends when the start exits (TorchServe's output goes to a file)
            lines.append((time.monotonic() - began, line))
            assert time.monotonic() - began < timeout, "".join(text for _, text in lines)
        code = process.wait(timeout=30)
        return Started(code, lines, time.monotonic() - began)

    def stop(self, wait: float = 90) -> None:
        """`server stop` (what `make stop` runs), then wait until the frontend and its workers are gone:
        `torchserve --stop` returns once it has signalled the frontend."""
        subprocess.run(self.server("stop"), cwd=self.cwd, env=self.env, timeout=180, check=False,
                       capture_output=True)
        deadline = time.monotonic() + wait
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.5)

    def running(self) -> list[int]:
        """The process groups of this directory's starts that still have a process (TorchServe, workers)."""
        alive = []
        for group in self.groups:
            try:
                os.killpg(group, 0)
                alive.append(group)
            except ProcessLookupError:
                pass
        return alive

    def clean_up(self) -> None:
        """Whatever a test left running, ended at once (SIGKILL to the start's groups and the keeper):
        the tests that need `make stop`'s path call `stop()` themselves."""
        for group in self.running():
            os.killpg(group, signal.SIGKILL)
        keeper = self.cwd / "logs" / "keeper.pid"
        if keeper.is_file():
            try:
                os.killpg(int(keeper.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        deadline = time.monotonic() + 30
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.1)

    def default_version(self, model: str) -> str:
        answer = requests.get(f"{self.properties['management_address']}/models/{model}", timeout=30)
        answer.raise_for_status()
        return str(answer.json()[0]["modelVersion"])

    def versions(self, model: str) -> list[str]:
        answer = requests.get(f"{self.properties['management_address']}/models/{model}/all", timeout=30)
        return sorted(str(entry["modelVersion"]) for entry in answer.json())

    def answering_version(self, model: str) -> str:
        body = (ROOT / "build/examples/tabular.json").read_bytes()
        answer = requests.post(f"{self.properties['inference_address']}/predictions/{model}", data=body,
                               headers={"Content-Type": "application/json"}, timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.headers["X-Model-Version"]


@pytest.fixture()
def serve_dir(tmp_path: Path) -> Iterator[ServeDir]:
    store = tmp_path / "store"
    (store / layout.VERSIONS).mkdir(parents=True)
    place = ServeDir.create(tmp_path, store)
    try:
        yield place
    finally:
        place.clean_up()


def with_candidate(tmp_path: Path, store: Path) -> Path:
    """tabular 1.0 (the chosen default) at the top of `store`, a real 2.0 build under .versions/."""
    built = tmp_path / "built"
    tabular_version(tmp_path, built, "2.0")
    candidate = layout.version_archive(store, "tabular", "2.0")
    shutil.copyfile(layout.version_archive(built, "tabular", "2.0"), candidate)
    shutil.copyfile(ROOT / "model_store/tabular.mar", store / "tabular.mar")
    shutil.copyfile(ROOT / "model_store/tabular.mar", layout.version_archive(store, "tabular", "1.0"))
    assert check_archive(candidate).version == "2.0" and check_archive(store / "tabular.mar").version == "1.0"
    return candidate


def test_the_chosen_default_serves_after_a_start_a_registration_and_a_restart(
        serve_dir: ServeDir, tmp_path: Path) -> None:
    store = Path(serve_dir.properties["model_store"])
    with_candidate(tmp_path, store)

    first = serve_dir.start()
    assert first.code == 0, first.text
    assert serve_dir.versions("tabular") == ["1.0"]  # the candidate under .versions/ was not loaded
    assert serve_dir.answering_version("tabular") == "1.0"

    # an operator registers the candidate from the top of the store, as TorchServe requires
    shutil.copyfile(layout.version_archive(store, "tabular", "2.0"), store / "tabular-2.0.mar")
    registered = tsctl(serve_dir.cwd, "register", str(store / "tabular-2.0.mar"), cwd=serve_dir.cwd,
                       env=serve_dir.env)
    assert registered.returncode == 0, registered.stderr
    assert serve_dir.versions("tabular") == ["1.0", "2.0"] and serve_dir.default_version("tabular") == "1.0"
    # tsctl moved it under .versions/, so only the default's archive is at the top
    assert layout.startup_archives(store) == [store / "tabular.mar"]
    assert check_archive(store / "tabular.mar").version == "1.0"
    assert "removed tabular-2.0.mar from the top of the store" in registered.stdout

    serve_dir.stop()
    assert not serve_dir.running() and not serve_dir.pid_file.exists()
    again = serve_dir.start()
    assert again.code == 0, again.text
    assert serve_dir.versions("tabular") == ["1.0"] and serve_dir.answering_version("tabular") == "1.0"


def test_a_stray_candidate_at_the_top_of_the_store_stops_the_start(serve_dir: ServeDir,
                                                                   tmp_path: Path) -> None:
    store = Path(serve_dir.properties["model_store"])
    shutil.copyfile(with_candidate(tmp_path, store), store / "tabular-2.0.mar")

    refused = serve_dir.start()
    assert refused.code == 2, refused.text
    assert "TorchServe was not started" in refused.text
    assert "tabular-2.0.mar (2.0), tabular.mar (1.0) all hold model 'tabular'" in refused.text
    assert f"keep candidates in {store}/.versions/" in refused.text
    assert not serve_dir.pid_file.exists() and not serve_dir.running()  # nothing was started


def slowed(target: Path, name: str, wait_s: float, startup_timeout: int) -> Path:
    """A copy of tabular.mar as model `name`, whose handler (tests/fixtures/slow_warmup.py) waits `wait_s`
    in its warm-up, with `startup_timeout` in its model-config."""
    with zipfile.ZipFile(ROOT / "model_store/tabular.mar") as good, \
            zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as slow:
        for member in good.namelist():
            data = good.read(member)
            if member == MANIFEST:
                manifest = json.loads(data)
                manifest["model"]["modelName"] = name
                data = json.dumps(manifest).encode()
            elif member == "tabular.py":  # the handler module the manifest names
                data = SLOW_HANDLER.read_bytes()
            elif member == "model-config.yaml":
                config = yaml.safe_load(data)
                config["startupTimeout"] = startup_timeout
                config["handler"]["warmup_wait_s"] = wait_s
                data = yaml.safe_dump(config).encode()
            slow.writestr(member, data)
    return target


def test_a_slow_warm_up_is_shown_warming_and_served_and_one_past_its_startup_timeout_is_named(
        serve_dir: ServeDir) -> None:
    store = Path(serve_dir.properties["model_store"])
    for model in ("tabular", "digits"):
        shutil.copyfile(ROOT / f"model_store/{model}.mar", store / f"{model}.mar")
    slowed(store / "slow.mar", "slow", SLOW_WAIT_S, startup_timeout=120)

    started = serve_dir.start()
    assert started.code == 0, started.text
    warming = [line.strip() for _, line in started.lines if line.strip().startswith("slow: warming (")]
    assert any('worker up; last log line: "warm-up: waiting on purpose' in line for line in warming), \
        started.text
    others = max(started.when("tabular: READY"), started.when("digits: READY"))
    trailed = started.when("slow: READY") - others
    assert trailed > 0, started.text  # the last one READY, and served all the same
    FIGURES["slow warm-up"] = (f"READY {trailed:.1f} s after the others, start exit 0 at "
                               f"{started.seconds:.1f} s; {len(warming)} warming lines")

    # the same server: a model whose warm-up cannot fit its startupTimeout is named soon after it passes
    too_slow = slowed(store / "tooslow.mar", "tooslow", 60, startup_timeout=TOO_SLOW_BUDGET)
    budgets = startup_budgets([read_archive(too_slow)])
    watch = LoadWatch(budgets, model_log=serve_dir.cwd / "logs/model_log.log")
    with TorchServeClient.from_properties(serve_dir.properties, KeyFile()) as client:
        client.register(too_slow.name, initial_workers=1, synchronous=False)
        began = time.monotonic()
        with pytest.raises(CannotLoad) as named:
            wait_until_ready(client, ["tooslow"], timeout=120, log_hint=serve_dir.cwd / "logs", watch=watch)
    waited = time.monotonic() - began
    FIGURES[f"startupTimeout {TOO_SLOW_BUDGET} s"] = f"named after {waited:.1f} s: {named.value}"
    assert waited < TOO_SLOW_BUDGET + watch.slack + 5, str(named.value)
    assert f"past its startupTimeout ({TOO_SLOW_BUDGET} s" in str(named.value)
