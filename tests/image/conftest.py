"""The built image, run with podman, beside a host TorchServe serving the same archives.

`make test-image` runs this folder (plain `make test` does not collect it: it needs podman
and `make image`). The container runs with `--network host`: its traffic stays on
loopback and no port has to be published through podman's network stack (which would
need the VM's firewall tooling). So that it cannot clash with anything else on the
machine, TorchServe's addresses are moved to free loopback ports with TorchServe's own
environment overrides (TS_INFERENCE_ADDRESS, ...; the image sets enable_envvars_config=true),
which is also the proof that those overrides are honoured.

It runs under deploy/kubernetes/deployment.yaml's settings, read from the manifest
(tests/image/deployment.py): read-only root, its emptyDirs as tmpfs, its user, capabilities
and no-new-privileges, and its environment, less the token switch (TOKEN_SWITCH) and with the
tests' own addresses and drain. So every test here checks the image under the Deployment's settings.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from scripts.deploy.image import CONTAINERS_CONF, TAG
from scripts.serve.local import LocalServer, free_port
from tests.conftest import FIGURES
from tests.image import deployment

MODELS = ("tabular", "digits", "minilm")
DRAIN_SECONDS = 8  # the entrypoint keeps serving this long after SIGTERM
# The manifest turns tokens off; these tests keep the image's default (on): the token tests need it.
TOKEN_SWITCH = "TS_DISABLE_TOKEN_AUTHORIZATION"


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
    result = subprocess.run(["podman", *args], capture_output=True, text=True, env=env, timeout=timeout,
                            check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


@dataclass
class Container:
    name: str
    ports: dict[str, int]
    health_log: list[str] = field(default_factory=list)  # each distinct health line, in order

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['inference']}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['management']}"

    def keys(self) -> dict[str, str]:
        """inference/management keys from the key file TorchServe wrote inside the container."""
        document = json.loads(podman("exec", self.name, "cat", "/var/lib/torchserve/key_file.json").stdout)
        return {"inference": document["inference"]["key"], "management": document["management"]["key"]}

    def healthcheck(self) -> tuple[bool, str]:
        """`podman healthcheck run` (the image's HEALTHCHECK), with the line it printed."""
        healthy = podman("healthcheck", "run", self.name, check=False).returncode == 0
        state = json.loads(podman("inspect", "--format", "{{json .State.Health}}", self.name).stdout)
        return healthy, state["Log"][-1]["Output"].strip()

    def wait_healthy(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while True:
            healthy, line = self.healthcheck()
            if not self.health_log or self.health_log[-1] != line:
                self.health_log.append(line)
            if healthy:
                return
            running = podman("inspect", "--format", "{{.State.Running}}", self.name).stdout.strip()
            assert running == "true", f"the container exited: {podman('logs', self.name).stdout[-3000:]}"
            assert time.monotonic() < deadline, f"not healthy after {timeout:.0f} s: {self.health_log}"
            time.sleep(1)


def run_container(name: str, ports: dict[str, int], flags: Sequence[str] = (),
                  environment: Mapping[str, str] | None = None) -> None:
    """`podman run` with `flags` and `environment`; the tests' addresses and drain win over it."""
    env = {
        **(environment or {}),
        "TS_INFERENCE_ADDRESS": f"http://127.0.0.1:{ports['inference']}",
        "TS_MANAGEMENT_ADDRESS": f"http://127.0.0.1:{ports['management']}",
        "TS_METRICS_ADDRESS": f"http://127.0.0.1:{ports['metrics']}",
        "TS_GRPC_INFERENCE_ADDRESS": "127.0.0.1", "TS_GRPC_MANAGEMENT_ADDRESS": "127.0.0.1",
        "TS_GRPC_INFERENCE_PORT": str(ports["grpc_inference"]),
        "TS_GRPC_MANAGEMENT_PORT": str(ports["grpc_management"]),
        "DRAIN_SECONDS": str(DRAIN_SECONDS),
        "KEEPER_HEALTH_ADDRESS": f"127.0.0.1:{ports['keeper']}",
    }
    env_flags = [arg for key, value in env.items() for arg in ("--env", f"{key}={value}")]
    podman("run", "--detach", "--name", name, "--network", "host", *flags, *env_flags, TAG)



@pytest.fixture(scope="session")
def container() -> Iterator[Container]:
    if podman("image", "exists", TAG, check=False).returncode != 0:
        pytest.fail(f"no image {TAG}: run `make image` (or `make test-image`, which builds it)")
    name = f"toolkit-image-test-{os.getpid()}"
    ports = {port: free_port() for port in ("inference", "management", "metrics", "grpc_inference",
                                             "grpc_management", "keeper")}
    settings = deployment.read()
    started = time.monotonic()
    environment = {key: value for key, value in settings.environment.items() if key != TOKEN_SWITCH}
    run_container(name, ports, settings.flags, environment)
    instance = Container(name, ports)
    try:
        instance.wait_healthy()
        FIGURES["time to healthy (podman run -> healthcheck passes)"] = f"{time.monotonic() - started:.1f} s"
        yield instance
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)


@pytest.fixture(scope="session")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """A TorchServe on the host serving the same archives: the answers the container must give."""
    with LocalServer.start(tmp_path_factory.mktemp("host"), Path("model_store").resolve(), MODELS) as server:
        yield server
