"""A real TorchServe (Java frontend, Python workers) on free loopback ports, for the session.

It serves the archives `make archive` put in model_store/, runs in its own
working directory and TMPDIR (so its pid file, key file, logs and worker sockets
never meet a TorchServe started by `make serve`), and is stopped afterwards even
when tests fail.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from scripts.client import TorchServeClient
from scripts.serve import torchserve_command, wait_until_ready

MODELS = ("tabular", "digits", "minilm")
FIGURES: dict[str, str] = {}  # measured figures, printed at the end of the run


@dataclass(frozen=True)
class Server:
    inference_url: str
    management_url: str
    metrics_url: str
    workdir: Path

    def client(self) -> TorchServeClient:
        return TorchServeClient(self.inference_url, self.management_url, timeout=60)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_properties(workdir: Path, store: Path, models: tuple[str, ...] = MODELS) -> dict[str, str]:
    """A config.properties in `workdir` with free loopback ports for everything."""
    ports = {name: free_port() for name in ("inference", "management", "metrics", "grpc_i",
                                            "grpc_m", "workers")}
    properties = {
        "inference_address": f"http://127.0.0.1:{ports['inference']}",
        "management_address": f"http://127.0.0.1:{ports['management']}",
        "metrics_address": f"http://127.0.0.1:{ports['metrics']}",
        "grpc_inference_address": "127.0.0.1",
        "grpc_management_address": "127.0.0.1",
        "grpc_inference_port": str(ports["grpc_i"]),
        "grpc_management_port": str(ports["grpc_m"]),
        "initial_worker_port": str(ports["workers"]),
        "model_store": str(store),
        "load_models": ",".join(f"{name}.mar" for name in models),
        "disable_token_authorization": "true",
        "enable_model_api": "true",
        "metrics_mode": "prometheus",
        "metrics_config": str(Path("configs/metrics.yaml").resolve()),
        "python": sys.executable,
    }
    (workdir / "config.properties").write_text(
        "".join(f"{key}={value}\n" for key, value in properties.items())
    )
    return properties


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    store = Path("model_store").resolve()
    missing = [name for name in MODELS if not (store / f"{name}.mar").exists()]
    if missing:
        pytest.fail(f"no archives for {missing} in {store}: run `make archive` (or `make test`)")
    workdir = tmp_path_factory.mktemp("torchserve")
    (workdir / "tmp").mkdir()
    properties = write_properties(workdir, store)
    env = {**os.environ, "TMPDIR": str(workdir / "tmp"), "LOG_LOCATION": str(workdir / "logs"),
           "METRICS_LOCATION": str(workdir / "logs")}
    command = torchserve_command("--start", "--foreground", "--ncs",
                                 "--ts-config", str(workdir / "config.properties"))
    with (workdir / "console.log").open("wb") as console:
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=console,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    instance = Server(properties["inference_address"], properties["management_address"],
                      properties["metrics_address"], workdir)
    try:
        with instance.client() as client:
            wait_until_ready(client, MODELS, timeout=300, log_hint=workdir / "logs")
        yield instance
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's whole process group (frontend and workers), then SIGKILL."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the launcher is gone; wait for Java and its workers too
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("measured figures")
        for name, value in FIGURES.items():
            terminalreporter.write_line(f"{name}: {value}")
