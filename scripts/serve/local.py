"""A private TorchServe on free loopback ports, in its own working directory, for tests and benchmarks.

Its pid file, key file, logs, worker sockets and unpacked archives live under `workdir`
(TMPDIR, TEMP and LOG_LOCATION point there; TEMP becomes the frontend's java.io.tmpdir, where
it unpacks each .mar), so it never meets a TorchServe started by `make serve` and leaves
nothing behind when it is killed.
It runs in the foreground in its own process group and is stopped with the whole
group (frontend and Python workers), even when the caller fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import requests

from scripts.client.rest import KeyFile, TorchServeClient, TorchServeError
from scripts.config.model import METRICS_CONFIG
from scripts.serve.server import torchserve_command, wait_until_ready

LOG4J = Path("configs/log4j2.xml")  # TorchServe's log configuration with the per-request DEBUG lines off


def project_frontend() -> dict[str, str]:
    """The frontend properties configs/*.properties ship: our log4j2.xml, absolute here, since a
    private server runs in its own directory. `{"vmargs": ""}` in `extra` gives TorchServe's own."""
    return {"vmargs": f"-Dlog4j.configurationFile={LOG4J.resolve()}"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_properties(workdir: Path, store: Path, archives: Sequence[str],
                     extra: Mapping[str, str] | None = None) -> dict[str, str]:
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
        "load_models": ",".join(archives) if archives else "",
        "disable_token_authorization": "true",
        "enable_model_api": "true",
        "metrics_mode": "prometheus",
        "metrics_config": str(METRICS_CONFIG.resolve()),
        "python": sys.executable,
        **project_frontend(),
        **(extra or {}),
    }
    (workdir / "config.properties").write_text(
        "".join(f"{key}={value}\n" for key, value in properties.items())
    )
    return properties


def wait_until_answering(ping: Callable[[], object], process: subprocess.Popen[bytes], timeout: float,
                         what: str = "TorchServe") -> None:
    """Call `ping` until it stops raising; fail early if the server process died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ping()
            return
        except (requests.RequestException, TorchServeError):
            if process.poll() is not None:
                raise RuntimeError(f"{what} exited with code {process.returncode}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not answer within {timeout:.0f}s") from None
            time.sleep(0.3)


def stop_group(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM `process`'s whole group (it was started with start_new_session; continued, in case it
    was paused), SIGKILL it if any member outlives `grace` s. Waits for every member, not only the
    leader: TorchServe's Java frontend and workers, LitServe's workers, outlive their launcher."""
    for signum in (signal.SIGTERM, signal.SIGCONT):
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signum)
    if group_ended(process, grace):
        return
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    if not group_ended(process, 10):
        raise RuntimeError(f"process group {process.pid} survived SIGKILL")


def group_ended(process: subprocess.Popen[bytes], timeout: float) -> bool:
    """Whether the leader `process` (reaped here) and every other member of its group ended in time."""
    deadline = time.monotonic() + timeout
    while process.poll() is None or group_alive(process.pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def group_alive(group: int) -> bool:
    """Whether any process of group `group` is left (one that exited but was not reaped counts)."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class LocalServer:
    workdir: Path
    properties: dict[str, str]
    process: subprocess.Popen[bytes]

    @property
    def inference_url(self) -> str:
        return self.properties["inference_address"]

    @property
    def management_url(self) -> str:
        return self.properties["management_address"]

    @property
    def metrics_url(self) -> str:
        return self.properties["metrics_address"]

    @property
    def key_file(self) -> Path:
        """Where TorchServe writes its keys when token authorization is on (its working directory)."""
        return self.workdir / "key_file.json"

    def client(self, timeout: float = 60) -> TorchServeClient:
        return TorchServeClient(self.inference_url, self.management_url, KeyFile.read(self.key_file),
                                timeout=timeout, metrics_url=self.metrics_url)

    @classmethod
    def launch(cls, workdir: Path, store: Path, archives: Sequence[str],
               extra: Mapping[str, str] | None = None) -> LocalServer:
        """Start TorchServe on `archives` (file names in `store`) without waiting for anything:
        for tests that watch it come up, or watch a model that never does."""
        (workdir / "tmp").mkdir(parents=True, exist_ok=True)
        properties = write_properties(workdir, store, archives, extra)
        env = {**os.environ, "TMPDIR": str(workdir / "tmp"), "TEMP": str(workdir / "tmp"),
               "LOG_LOCATION": str(workdir / "logs"),
               "METRICS_LOCATION": str(workdir / "logs")}
        env.pop("TS_CONFIG_FILE", None)  # the properties are the ones written here
        command = torchserve_command("--start", "--foreground", "--ncs",
                                     "--ts-config", str(workdir / "config.properties"))
        with (workdir / "console.log").open("wb") as console:
            process = subprocess.Popen(command, cwd=workdir, env=env, stdout=console,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        return cls(workdir, properties, process)

    @classmethod
    def start(cls, workdir: Path, store: Path, models: Sequence[str], timeout: float = 300,
              extra: Mapping[str, str] | None = None) -> LocalServer:
        """Start TorchServe serving `models` (archive stems in `store`) and wait until all are READY."""
        server = cls.launch(workdir, store, [f"{name}.mar" for name in models], extra)
        process = server.process
        try:
            with server.client() as client:
                wait_until_answering(client.ping, process, timeout)
                wait_until_ready(client, models, timeout=timeout, log_hint=workdir / "logs")
        except BaseException:
            server.stop()
            raise
        return server

    def register(self, archive: str, name: str, batch_size: int, max_batch_delay: int,
                 workers: int | None = None) -> None:
        """Register `archive` (in the store) as `name` with this batching; then scale to `workers`."""
        response = requests.post(f"{self.management_url}/models", timeout=600, params={
            "url": archive, "model_name": name, "batch_size": batch_size,
            "max_batch_delay": max_batch_delay, "synchronous": "true"})
        response.raise_for_status()
        if workers is not None:  # registration takes the archive's own worker counts
            response = requests.put(f"{self.management_url}/models/{name}", timeout=600, params={
                "min_worker": workers, "max_worker": workers, "synchronous": "true"})
            response.raise_for_status()

    def unregister(self, name: str) -> None:
        requests.delete(f"{self.management_url}/models/{name}", timeout=120).raise_for_status()

    def stop(self) -> None:
        """End the server's whole process group (frontend and workers) at once.

        A private server holds nothing a graceful stop would keep (its files are its caller's
        working directory), and TorchServe's frontend takes about 4 s to shut down on SIGTERM: a
        test or a benchmark pays that for nothing. Stopping gracefully is what `make stop`
        (scripts/serve/server.py) and `torchserve --stop` do, and their own tests run them.
        """
        stop_group(self.process, grace=0)

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
