"""The image, run under the Deployment's settings: healthy only when warm, answers like the host,
not root, no write refused, and a clean SIGTERM.

Tests run in file order on one container; the SIGTERM test stops it, so it comes last.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from scripts.deploy.image import TAG
from scripts.serve.local import LocalServer
from tests.battery import Call, bad_calls, check_good, good_calls
from tests.conftest import FIGURES
from tests.helpers import SENTENCES, sentence_transformers_embeddings
from tests.image import deployment
from tests.image.conftest import DRAIN_SECONDS, MODELS, Container, podman

TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)")
# What a refused write logs: Python's OSError, Java's exceptions, the shell's.
REFUSED = ("Read-only file system", "Permission denied", "ReadOnlyFileSystemException",
           "AccessDeniedException")
SERVER_DIR = "/var/lib/torchserve"  # TorchServe's working directory: key_file.json, logs/
GRACE_SECONDS = 30  # podman stop -t: SIGKILL after this; DRAIN_SECONDS + the JVM's stop fit well inside
EXAMPLES = [Call("tabular", Path("build/examples/tabular.json").read_bytes()),
            Call("digits", Path("build/examples/digit.png").read_bytes(), "image/png"),
            Call("minilm", Path("build/examples/minilm.json").read_bytes())]


def send(base_url: str, call: Call, token: str | None = None,
         session: requests.Session | None = None) -> requests.Response:
    """The call to the container (a model's first answer there may take its warm-up)."""
    return call.send(base_url, token, session, timeout=120)


def same(ours: Any, theirs: Any, where: str = "") -> list[str]:
    """Where two JSON documents differ; floats may differ by 1e-5 relative (threads, batch sizes)."""
    if isinstance(ours, float) or isinstance(theirs, float):
        if isinstance(ours, (int, float)) and isinstance(theirs, (int, float)) and \
                math.isclose(ours, theirs, rel_tol=1e-5, abs_tol=1e-6):
            return []
        return [f"{where}: {ours!r} != {theirs!r}"]
    if isinstance(ours, dict) and isinstance(theirs, dict):
        if set(ours) != set(theirs):
            return [f"{where}: keys {sorted(ours)} != {sorted(theirs)}"]
        return [d for key in ours for d in same(ours[key], theirs[key], f"{where}.{key}")]
    if isinstance(ours, list) and isinstance(theirs, list):
        if len(ours) != len(theirs):
            return [f"{where}: {len(ours)} items != {len(theirs)}"]
        pairs = enumerate(zip(ours, theirs, strict=True))
        return [d for i, (a, b) in pairs for d in same(a, b, f"{where}[{i}]")]
    return [] if ours == theirs else [f"{where}: {ours!r} != {theirs!r}"]


def without_generated_id(call: Call, answer: Any) -> Any:
    """An OIP answer to a request without an `id` carries a fresh UUID: equal answers differ there."""
    if call.route != "oip" or not isinstance(answer, dict) or "id" not in answer:
        return answer
    try:
        sent = json.loads(call.body)
    except ValueError:
        return answer
    if isinstance(sent, dict) and "id" in sent:
        return answer
    return {key: value for key, value in answer.items() if key != "id"}


def test_health_fails_until_every_model_is_ready(container: Container) -> None:
    """Seen while the container started: unhealthy first (frontend down, then models loading)."""
    FIGURES["health lines seen while starting"] = " | ".join(container.health_log)
    assert len(container.health_log) >= 2, container.health_log
    assert all(line.startswith("not ready") for line in container.health_log[:-1])
    assert container.health_log[-1] == "ready: digits (1 READY), minilm (1 READY), tabular (1 READY)"


def test_runs_as_uid_10001_under_tini(container: Container) -> None:
    assert podman("image", "inspect", "--format", "{{.Config.User}}", TAG).stdout.strip() == "10001:10001"
    rows = [line.split(None, 4) for line in
            podman("top", container.name, "pid", "ppid", "user", "huser", "args").stdout.splitlines()[1:]]
    assert rows and all(row[2] == "serve" and row[3] == "10001" for row in rows), rows
    by_pid = {row[0]: row for row in rows}
    assert by_pid["1"][4].startswith("/usr/bin/tini -- python -m scripts.serve.entrypoint")
    java = [row for row in rows if row[4].startswith("java ")]
    assert len(java) == 1 and "org.pytorch.serve.ModelServer" in java[0][4]
    assert podman("exec", container.name, "id", "-u").stdout.strip() == "10001"


def proc_status(container: Container) -> dict[str, str]:
    lines = podman("exec", container.name, "cat", "/proc/1/status").stdout.splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def test_runs_under_the_deployments_settings(container: Container) -> None:
    """What deployment.yaml asks, seen from inside the container: PID 1 with no capability and no
    new privileges, the root read-only, each emptyDir a tmpfs of its sizeLimit, written by TorchServe."""
    settings = deployment.read()
    assert {"--read-only", "--cap-drop=ALL", "--security-opt=no-new-privileges"} <= set(settings.flags)
    status = proc_status(container)
    assert {status[key] for key in ("CapPrm", "CapEff", "CapBnd", "CapAmb")} == {"0000000000000000"}, status
    assert status["NoNewPrivs"] == "1"
    uid, _, gid = (settings.user or "").partition(":")
    assert status["Uid"].split() == [uid] * 4 and status["Gid"].split() == [gid or uid] * 4, status
    lines = podman("exec", container.name, "cat", "/proc/mounts").stdout.splitlines()
    mounts = {fields[1]: fields for fields in (line.split() for line in lines)}
    assert mounts["/"][3].split(",")[0] == "ro", mounts["/"]
    assert set(settings.tmpfs) == {SERVER_DIR, "/tmp"}
    for path, size in settings.tmpfs.items():
        kind, options = mounts[path][2], mounts[path][3].split(",")
        assert kind == "tmpfs" and "rw" in options and "noexec" not in options, mounts[path]
        assert size is None or f"size={size // 1024}k" in options, mounts[path]
    refused = podman("exec", container.name, "touch", "/opt/toolkit/written", check=False)
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr, refused.stderr
    written = podman("exec", container.name, "sh", "-c", f"ls {SERVER_DIR} {SERVER_DIR}/logs /tmp").stdout
    assert {"key_file.json", "ts_log.log", "models"} <= set(written.split()), written


def test_the_environment_moved_every_port(container: Container) -> None:
    """TS_*_ADDRESS and TS_GRPC_*_PORT were honoured: the container listens on the free ports we
    picked (nothing else does), HTTP and gRPC alike."""
    for name, port in container.ports.items():
        with socket.socket() as probe:
            probe.settimeout(5)
            assert probe.connect_ex(("127.0.0.1", port)) == 0, f"nothing listens on {name} port {port}"


def test_the_image_carries_the_hosts_archives(container: Container) -> None:
    """Else the comparison below would compare different models: rebuild with `make image`."""
    listing = podman("exec", container.name, "sh", "-c",
                     "cd /opt/toolkit/model_store && sha256sum *.mar").stdout
    inside = {name: digest for digest, name in (line.split() for line in listing.splitlines())}
    host = {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(Path("model_store").glob("*.mar"))}
    assert inside == host, "the image's archives differ from model_store/: run `make image`"


def test_answers_equal_the_host_servers(container: Container, host: LocalServer) -> None:
    """Every good call (native, KServe v1, OIP, versioned, multipart) of the three models, the
    examples, and the bad-input battery: same status, same body, as a host TorchServe."""
    token = container.keys()["inference"]
    calls = [good.call for good in good_calls()] + EXAMPLES + [bad.call for bad in bad_calls()]
    routes = {(call.model, call.route) for call in calls}
    assert {(m, r) for m in MODELS for r in ("predictions", "kserve-v1", "oip")} <= routes
    differences = []
    for call in calls:
        ours, theirs = send(container.inference_url, call, token), send(host.inference_url, call)
        if ours.status_code != theirs.status_code:
            differences.append(f"{call.model} {call.route}: {ours.status_code} != {theirs.status_code}")
        else:
            pair = (without_generated_id(call, answer.json()) for answer in (ours, theirs))
            differences += [f"{call.model} {call.route}{d}" for d in same(*pair)]
    assert differences == [], "\n".join(differences)
    FIGURES["requests compared with the host"] = str(len(calls))


def test_good_answers_are_right_not_only_equal(container: Container) -> None:
    token = container.keys()["inference"]
    embeddings = dict(zip(SENTENCES, sentence_transformers_embeddings(SENTENCES), strict=True))
    for good in good_calls():
        answer = send(container.inference_url, good.call, token)
        assert answer.status_code == 200, answer.text
        check_good(good, answer.json(), embeddings)


def test_the_token_is_required(container: Container) -> None:
    answer = send(container.inference_url, EXAMPLES[0])
    assert answer.status_code == 400 and "Token Authorization failed" in answer.text


def scale(container: Container, model: str, workers: int) -> None:
    answer = requests.put(f"{container.management_url}/models/{model}", timeout=600,
                          params={"min_worker": workers, "max_worker": workers, "synchronous": "true"},
                          headers={"Authorization": f"Bearer {container.keys()['management']}"})
    assert answer.ok, answer.text


def test_health_is_false_while_a_model_has_no_ready_worker(container: Container) -> None:
    scale(container, "minilm", 0)
    try:
        assert container.healthcheck() == (False, "not ready: minilm has 0 READY of 0 workers")
        time.sleep(1.2)  # past the keeper's one-second cache
        ready = requests.get(f"http://127.0.0.1:{container.ports['keeper']}/ready", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["detail"] == "not ready: minilm has 0 READY of 0 workers"
        live = podman("exec", container.name, "python", "-m", "scripts.serve.health", "--live", check=False)
        assert live.returncode == 0 and live.stdout.startswith("live: TorchServe answers"), live.stdout
    finally:
        scale(container, "minilm", 1)
    container.wait_healthy()
    assert container.healthcheck()[0]


def test_the_keeper_answers_ready_without_a_key(container: Container) -> None:
    """Load balancers have no key; TorchServe's own /ping wants one (token authorization is on)."""
    ping = requests.get(f"http://127.0.0.1:{container.ports['inference']}/ping", timeout=10)
    assert ping.status_code == 400
    ready = requests.get(f"http://127.0.0.1:{container.ports['keeper']}/ready", timeout=10)
    assert ready.status_code == 200 and ready.json()["ready"] is True, ready.text


def refused_writes(logs: str) -> list[str]:
    return [line for line in logs.splitlines() if any(word in line for word in REFUSED)]


def test_no_write_was_refused(container: Container) -> None:
    """Neither the container's output nor TorchServe's log files (the workers' output is in
    model_log.log) name a refused write, after everything above ran. The SIGTERM test checks its drain."""
    result = podman("logs", container.name)
    files = {name: podman("exec", container.name, "cat", f"{SERVER_DIR}/logs/{name}").stdout
             for name in ("ts_log.log", "model_log.log")}
    assert "Model server started" in result.stdout and all(files.values()), "no log to read"
    assert refused_writes("\n".join([result.stdout, result.stderr, *files.values()])) == []


def load(container: Container, token: str, stop: threading.Event) -> list[tuple[float, float, str]]:
    """One client sending until `stop`: (wall-clock start, end, outcome) per request."""
    calls = [Call("minilm", json.dumps({"text": SENTENCES[:8]}).encode()), EXAMPLES[0], EXAMPLES[1]]
    records = []
    with requests.Session() as session:
        for number in range(100_000):
            if stop.is_set():
                break
            began = time.time()
            try:
                outcome = str(send(container.inference_url, calls[number % 3], token, session).status_code)
            except requests.RequestException as error:
                outcome = type(error).__name__
            records.append((began, time.time(), outcome))
    return records


def signal_time(container: Container) -> float:
    """When the entrypoint logged that SIGTERM arrived (podman's own timestamp of that line)."""
    result = podman("logs", "--timestamps", container.name)
    logs = (result.stdout + result.stderr).splitlines()  # the entrypoint logs to stderr
    line = next(line for line in logs if "entrypoint: signal received" in line)
    match = TIMESTAMP.match(line)
    assert match, line
    seconds, fraction, zone = match.groups()
    zone = "+00:00" if zone == "Z" else zone
    return datetime.fromisoformat(f"{seconds}.{(fraction or '0')[:6]:0<6}{zone}").timestamp()


def test_sigterm_under_light_load_drains_and_exits_within_the_grace_period(container: Container) -> None:
    token = container.keys()["inference"]
    stop_sending = threading.Event()
    with ThreadPoolExecutor(5) as pool:  # 4 clients and `podman stop`
        clients = [pool.submit(load, container, token, stop_sending) for _ in range(4)]
        try:
            time.sleep(3)  # load running
            began = time.monotonic()
            stopper = pool.submit(podman, "stop", "--time", str(GRACE_SECONDS), container.name,
                                  timeout=GRACE_SECONDS + 60)
            while not draining(container):
                assert not stopper.done(), "the container stopped before it was seen draining"
                time.sleep(0.2)
        finally:
            stop_sending.set()  # what is in flight now must still be answered
        during_drain = [send(container.inference_url, call, token).status_code for call in EXAMPLES]
        records = [record for client in clients for record in client.result()]
        stopper.result()
        stopped_after = time.monotonic() - began
    exit_code = podman("inspect", "--format", "{{.State.ExitCode}}", container.name).stdout.strip()
    result = podman("logs", container.name)
    logs = result.stdout + result.stderr
    sigterm = signal_time(container)
    in_flight = [r for r in records if r[0] < sigterm < r[1]]
    FIGURES["SIGTERM under load"] = (
        f"{len(records)} requests from 4 clients, {len(in_flight)} in flight when SIGTERM arrived, "
        f"{sum(r[0] > sigterm for r in records)} sent during the drain; podman stop returned after "
        f"{stopped_after:.1f} s (drain {DRAIN_SECONDS} s, grace {GRACE_SECONDS} s)")
    assert exit_code == "0", f"exit {exit_code} (137: SIGKILLed after the grace period)\n{logs[-3000:]}"
    assert "entrypoint: SIGTERM to the frontend" in logs and "entrypoint: TorchServe stopped" in logs
    assert during_drain == [200, 200, 200]
    failed = [r for r in records if r[2] != "200"]
    assert failed == [], f"{len(failed)} of {len(records)} requests not answered 200: {failed[:5]}"
    assert in_flight, "no request was in flight at SIGTERM, so this run proved nothing about them"
    assert refused_writes(logs) == []  # the drain marker, the stop


def draining(container: Container) -> bool:
    """The entrypoint logged that SIGTERM arrived. (podman refuses `exec` into a container it is
    stopping, so neither the marker nor the health command can be read from outside now.)"""
    result = podman("logs", container.name)
    return "entrypoint: signal received" in result.stdout + result.stderr
