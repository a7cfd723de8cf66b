"""Worker faults against a real TorchServe under configs/production.properties and locust load.

- SIGKILL of the worker: only its batch in flight fails, with TorchServe's own
  "Worker died." (a body our handlers never write): 507, or 500 when the frontend saw the
  connection close before the exit code (docs/operations.md), and a new worker answers soon.
- `tsctl recycle --if-over` with a limit the worker is over: the workers are replaced
  through a stand-in version (scripts/operate/handoff.py) and no request fails.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from handlers.errors import OutOfResources
from scripts.build.store import read_archive
from scripts.client.rest import TorchServeError
from scripts.measure.loadgen import Reply
from scripts.measure.overload import worker_state
from scripts.serve.local import LocalServer
from tests.conftest import FIGURES
from tests.e2e.cli import tsctl
from tests.e2e.shipped import PRODUCTION, shipped_properties
from tests.load import BackgroundLoad

pytestmark = pytest.mark.e2e
BATCH_SIZE = 16  # tabular's batchSize: the most requests one batch in flight holds
WORKER_DIED = {"type": "InternalServerException", "message": "Worker died."}
TRAFFIC = 100  # requests answered before the fault, and by the workers that replace the old one


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """tabular from a private store (a recycle writes its stand-in there), with the production file's
    own values: token authorization on, the model API on, allowed_urls locked to the store."""
    root = tmp_path_factory.mktemp("faults")
    (root / "store").mkdir()
    shutil.copyfile("model_store/tabular.mar", root / "store" / "tabular.mar")
    extra = shipped_properties(PRODUCTION)
    with LocalServer.start(root / "server", root / "store", ["tabular"], extra=extra) as instance:
        yield instance


def worker_pids(server: LocalServer) -> list[int]:
    """The pids of the default version's READY workers."""
    return [pid for pid, status in worker_state(server, "tabular") if status == "READY"]


def failure_bodies(workdir: Path) -> list[str]:
    """What locust recorded of the failed responses (status and body) in its failures CSV."""
    texts = []
    for path in workdir.glob("locust-*_failures.csv"):
        with path.open() as stream:
            texts.extend(row["Error"] for row in csv.DictReader(stream))
    return texts


def test_a_killed_worker_fails_only_its_batch_with_torchserves_worker_died(server: LocalServer,
                                                                            tmp_path: Path) -> None:
    (victim,) = worker_pids(server)
    # at most 120 s: stopped once the new worker answers
    with BackgroundLoad.start(server, "tabular", tmp_path, seconds=120) as load:
        load.wait_for(lambda replies: len(replies) >= TRAFFIC, "traffic on the worker before the kill")
        killed_at = time.time()
        os.kill(victim, signal.SIGKILL)
        while not [pid for pid in worker_pids(server) if pid != victim]:
            assert time.time() - killed_at < 90, "no new READY worker within 90 s of the SIGKILL"
            time.sleep(0.1)
        ready_after = time.time() - killed_at
        load.wait_for(lambda replies: sum(r.status == 200 and r.answered > killed_at + ready_after
                                          for r in replies) >= TRAFFIC, "answers from the new worker")
        load.stop()
    replies = load.replies()
    failed = [reply for reply in replies if reply.status != 200]
    assert 1 <= len(failed) <= BATCH_SIZE, f"{len(failed)} failed of {len(replies)}"
    (status,) = {reply.status for reply in failed}  # one batch, one status
    assert status in (507, 500), status  # 500: TorchServe had not read the exit code (137) yet
    assert {reply.version for reply in failed} == {"-"}, "the frontend's answer carries no X-Model-Version"
    assert {reply.version for reply in replies if reply.status == 200} == {"1.0"}
    (body,) = set(failure_bodies(tmp_path))
    for key, value in {**WORKER_DIED, "code": status}.items():
        assert f'"{key}": {json.dumps(value)}' in body, body
    ours = OutOfResources("the device ran out of memory for this batch; retry with fewer instances").body()
    assert ours["code"] == 507 and "message" not in ours and "error" in ours  # the rule clients apply
    answered = min(reply.answered for reply in replies if reply.status == 200 and reply.sent > killed_at)
    FIGURES["worker SIGKILL under load"] = (
        f"{len(failed)} of {len(replies)} requests failed ({status}); new worker READY after "
        f"{ready_after:.1f} s, first answer after {answered - killed_at:.1f} s")


def watch_ready(server: LocalServer, stop: threading.Event, seen: list[int | Exception]) -> None:
    """Until `stop`: how many READY workers the default version has, every 0.2 s."""
    while not stop.is_set():
        try:
            seen.append(len(worker_pids(server)))
        except (requests.RequestException, TorchServeError) as error:
            seen.append(error)
        time.sleep(0.2)


def recycle(server: LocalServer, config: Path) -> subprocess.CompletedProcess[str]:
    return tsctl(server.workdir, "--json", "recycle", "tabular", "--if-over", "--config", str(config),
                 log=server.workdir / "rollout.jsonl", timeout=400)


def policy(tmp_path: Path, max_rss_mb: float) -> Path:
    config = yaml.safe_load(Path("configs/models/tabular.yaml").read_text())
    config["recycle"] = {"max_rss_mb": max_rss_mb}
    path = tmp_path / f"tabular-{max_rss_mb:g}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_recycling_under_load_replaces_the_worker_and_fails_nothing(server: LocalServer,
                                                                    tmp_path: Path) -> None:
    (before,) = worker_pids(server)
    under = recycle(server, policy(tmp_path, 100_000))
    assert under.returncode == 0, under.stderr
    assert json.loads(under.stdout)["recycled"] is False and worker_pids(server) == [before]

    ready_counts: list[int | Exception] = []
    stop = threading.Event()
    watcher = threading.Thread(target=watch_ready, args=(server, stop, ready_counts))
    # at most 120 s: stopped once the new workers answer
    with BackgroundLoad.start(server, "tabular", tmp_path, seconds=120) as load:
        watcher.start()
        started = time.time()
        done = recycle(server, policy(tmp_path, 1))
        finished = time.time()
        stop.set()
        watcher.join()
        load.wait_for(lambda replies: sum(r.sent > finished for r in replies) >= TRAFFIC,
                      "traffic after the recycle")
        load.stop()
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    replies: list[Reply] = load.replies()
    failed = [reply for reply in replies if reply.status != 200]
    assert failed == [], f"{len(failed)} of {len(replies)} failed: {failure_bodies(tmp_path)[:3]}"
    during = [reply for reply in replies if started <= reply.sent <= finished]
    assert len(during) > 50 and max(reply.sent for reply in replies) > finished, "not under load"
    assert result["recycled"] and "max_rss_mb 1" in result["reasons"][0]
    assert result["old_pids"] == [before] and worker_pids(server) == result["new_pids"] != [before]
    assert ready_counts and all(isinstance(n, int) and n >= 1 for n in ready_counts), ready_counts
    assert {reply.version for reply in during} <= {"1.0", "1.0-recycle"}
    with server.client() as client:
        assert [entry["modelVersion"] for entry in client.describe("tabular", "all")] == ["1.0"]
    store = Path(server.properties["model_store"])
    assert sorted(path.name for path in store.iterdir()) == ["tabular.mar"]
    assert read_archive(store / "tabular.mar").version == "1.0"
    FIGURES["worker recycle under load"] = (
        f"0 of {len(during)} requests failed during it; {result['seconds']} s; pid {before} -> "
        f"{result['new_pids']}")
