"""The KServe bundle served as KServe's TorchServe runtime starts it, called as its wrapper calls: no token.

The command is the runtime's (config/runtimes/kserve-torchserve.yaml in kserve/kserve):
`torchserve --start --model-store=BUNDLE/model-store --ts-config=BUNDLE/config/config.properties`,
plus --foreground so the test owns the process group. What differs from a pod is only
what must, through the TS_* variables the bundle's enable_envvars_config=true allows:
free loopback ports (other servers share this machine), the worker port, and the
metrics config's path (/mnt/models does not exist here). TS_SERVICE_ENVELOPE is empty,
as the runtime renders it from the InferenceService's serviceEnvelope label.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from scripts.client.prometheus import settled_scrape, total
from scripts.deploy import kserve
from scripts.deploy.facts import read_all
from scripts.serve.local import LocalServer, free_port, wait_until_answering
from scripts.serve.server import torchserve_command
from tests.battery import check_good, good_calls
from tests.conftest import FIGURES
from tests.helpers import SENTENCES, sentence_transformers_embeddings

pytestmark = pytest.mark.e2e
WRAPPER_ROUTES = ("kserve-v1", "oip")  # what the wrapper forwards protocol v1 and v2 requests to


def runtime_environment(bundle: Path, workdir: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(the process environment, the addresses it moves TorchServe to)."""
    addresses = {"inference_address": f"http://127.0.0.1:{free_port()}",
                 "management_address": f"http://127.0.0.1:{free_port()}",
                 "metrics_address": f"http://127.0.0.1:{free_port()}"}
    moved = {f"TS_{key.upper()}": value for key, value in addresses.items()}
    moved |= {"TS_GRPC_INFERENCE_PORT": str(free_port()), "TS_GRPC_MANAGEMENT_PORT": str(free_port()),
              "TS_INITIAL_WORKER_PORT": str(free_port()),
              "TS_METRICS_CONFIG": str(bundle / "config" / "metrics.yaml"), "TS_SERVICE_ENVELOPE": ""}
    env = {**os.environ, **moved, "TMPDIR": str(workdir / "tmp"), "TEMP": str(workdir / "tmp"),
           "LOG_LOCATION": str(workdir / "logs"), "METRICS_LOCATION": str(workdir / "logs"),
           # workers start with the first `python` on PATH: this environment's, with torch
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return env, addresses


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    workdir = tmp_path_factory.mktemp("kserve-runtime")
    bundle = workdir / "bundle"
    kserve.write_bundle(bundle, read_all())
    (workdir / "tmp").mkdir()
    env, addresses = runtime_environment(bundle, workdir)
    command = torchserve_command("--start", f"--model-store={bundle}/model-store",
                                 f"--ts-config={bundle}/config/config.properties", "--foreground")
    started = time.monotonic()
    with (workdir / "console.log").open("wb") as console:
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=console, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = LocalServer(workdir, addresses, process)
    try:
        wait_until_answering(lambda: requests.get(f"{server.management_url}/models", timeout=5)
                             .raise_for_status(), process, timeout=120, what="the bundle's TorchServe")
        wait_until_wrapper_ready(server, [model.name for model in read_all()], timeout=300)
        FIGURES["KServe bundle: start to every model READY"] = f"{time.monotonic() - started:.1f} s"
        yield server
    finally:
        server.stop()


def wrapper_ready(server: LocalServer, name: str) -> bool:
    """The wrapper's own readiness call (TorchserveModel.load): no token, the default version's workers."""
    response = requests.get(f"{server.management_url}/models/{name}", params={"customized": "false"},
                            timeout=5)
    workers = response.json()[0]["workers"] if response.ok else []
    return any(worker["status"] == "READY" for worker in workers)


def wait_until_wrapper_ready(server: LocalServer, names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(wrapper_ready(server, name) for name in names):
        if server.process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"not READY as the wrapper sees it: {names}; see {server.workdir}/logs")
        time.sleep(0.2)


def test_every_model_answers_every_route_with_no_token(runtime: LocalServer) -> None:
    calls = good_calls()
    assert {call.call.route for call in calls} >= {"predictions", *WRAPPER_ROUTES}
    assert {call.call.model for call in calls} == {model.name for model in read_all()}
    embeddings = dict(zip(SENTENCES, sentence_transformers_embeddings(SENTENCES), strict=True))
    for good in calls:
        answer = good.call.send(runtime.inference_url)
        assert answer.status_code == 200, (good.call.model, good.call.route, answer.text)
        check_good(good, answer.json(), embeddings)


def test_the_snapshot_registered_each_model_with_its_yamls_batching(runtime: LocalServer) -> None:
    for model in read_all():
        (description,) = requests.get(f"{runtime.management_url}/models/{model.name}", timeout=10).json()
        assert description["modelVersion"] == model.version
        assert (description["batchSize"], description["maxBatchDelay"], description["minWorkers"]) == (
            model.batch_size, model.max_batch_delay, model.min_workers)


def test_the_model_api_is_off(runtime: LocalServer) -> None:
    answer = requests.post(f"{runtime.management_url}/models", params={"url": "tabular.mar"}, timeout=10)
    assert answer.status_code == 405, answer.text


def test_the_bundles_metrics_config_is_the_one_in_use(runtime: LocalServer) -> None:
    """Our handlers' own metrics appear only when metrics_config points at our declarations."""
    answer = requests.post(f"{runtime.inference_url}/predictions/tabular", json={"features": [0.0] * 30},
                           timeout=60)
    assert answer.status_code == 200, answer.text
    settled_scrape(runtime.metrics_url,
                   lambda samples: total(samples, "HandlerResponses_total", ModelName="tabular") > 0)
    text = requests.get(f"{runtime.metrics_url}/metrics", timeout=10).text
    assert "\nts_inference_requests_total{" in text
    assert "\nBatchRequests_sum{" in text and "\nHandlerResponses_total{" in text, text[:500]
