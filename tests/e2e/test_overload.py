"""Overload against a real TorchServe: a full job queue refuses fast, says so, and loses no worker.

A copy of digits, archived by the real archive step from a YAML with `jobQueueSize: 2`
and `batchSize: 1`, is flooded by locust (12 users sending 1024 x 1024 images, each
tens of milliseconds of work). The queue fills; the refusals must be 503 with the
frontend's "has no worker to serve inference request", come back much faster than the
requests that were queued, and leave the worker READY and unrestarted. A
TorchServeClient with backoff gets 200 for a request the server first refused, and
`tsctl gate` says "overloaded" when the retries run out.
"""

from __future__ import annotations

import io
import json
import logging
import statistics
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from PIL import Image

from scripts.build import archive, datasets
from scripts.build.models import digit_png
from scripts.client.backoff import NO_RETRY, Backoff
from scripts.client.rest import OVERLOAD_TEXT, Overloaded, TorchServeClient
from scripts.measure.loadgen import Reply, Workload, read_replies, run_load
from scripts.measure.overload import worker_state
from scripts.operate import tsctl
from scripts.serve.local import LocalServer

pytestmark = pytest.mark.e2e
QUEUE = 2
USERS = 12
FLOOD_SECONDS = 8


def big_digit(index: int) -> bytes:
    """A held-out digit scaled to 1024 x 1024: legal, and slow enough to keep the queue full."""
    small = Image.open(io.BytesIO(digit_png(datasets.digits().held_out_x[index])))
    buffer = io.BytesIO()
    small.resize((1024, 1024), Image.Resampling.NEAREST).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("overload")
    document = yaml.safe_load(Path("configs/models/digits.yaml").read_text())
    document["model_config"].update(batchSize=1, maxBatchDelay=0, jobQueueSize=QUEUE, minWorkers=1,
                                    maxWorkers=1)
    path = tmp / "digits.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def server(config: Path) -> Iterator[LocalServer]:
    store = config.parent / "store"
    assert archive.main([str(config), "--store", str(store)]) == 0
    with LocalServer.start(config.parent / "server", store, ["digits"]) as instance:
        yield instance


def flood(server: LocalServer, workdir: Path) -> tuple[ThreadPoolExecutor, object, Path]:
    bodies = Workload("image/png", [big_digit(i) for i in range(4)]).write(workdir / "big-digits.json")
    replies = workdir / "replies.txt"
    pool = ThreadPoolExecutor(1)
    future = pool.submit(run_load, server.inference_url, "/predictions/digits", bodies, USERS, FLOOD_SECONDS,
                         workdir, settle=0.0, extra_env={"BENCH_RESPONSES": str(replies)})
    deadline = time.monotonic() + 60
    while not (replies.exists() and replies.stat().st_size > 0):
        assert time.monotonic() < deadline and not future.done(), "locust sent nothing"
        time.sleep(0.2)
    return pool, future, replies


def first_refusal(server: LocalServer, body: bytes) -> Overloaded:
    """Send without retries until the server refuses (the flood keeps the queue full)."""
    with TorchServeClient(server.inference_url, server.management_url, overload_backoff=NO_RETRY) as client:
        for _ in range(200):
            try:
                client.predict("digits", body, "image/png")
            except Overloaded as refused:
                return refused
    raise AssertionError("200 sends during the flood and not one refused: is the queue limit applied?")


def test_the_archive_carries_the_queue_limit_and_torchserve_applies_it(server: LocalServer) -> None:
    with zipfile.ZipFile(server.workdir.parent / "store" / "digits.mar") as mar:
        names = [name for name in mar.namelist() if name.endswith("model-config.yaml")]
        assert names, mar.namelist()
        assert yaml.safe_load(mar.read(names[0]))["jobQueueSize"] == QUEUE
    with server.client() as client:
        description = client.describe("digits")[0]
    assert description["jobQueueStatus"]["remainingCapacity"] == QUEUE
    assert description["batchSize"] == 1


def test_a_flood_is_refused_fast_as_queue_full_and_the_worker_stays_ready(
        server: LocalServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    before = worker_state(server, "digits")
    assert [status for _, status in before] == ["READY"]
    pool, future, replies_file = flood(server, tmp_path)
    try:
        refused = first_refusal(server, big_digit(5))
        assert refused.status == 503 and OVERLOAD_TEXT in refused.message
        # READY while it refuses: the queue is full, not the worker
        assert worker_state(server, "digits") == before
        # A client with backoff, started while the queue is full, keeps re-sending until it is served.
        caplog.set_level(logging.INFO, logger="scripts.client.rest")
        patient = Backoff(attempts=200, total_seconds=40, base_seconds=0.05, max_pause_seconds=0.5)
        with TorchServeClient(server.inference_url, overload_backoff=patient) as client:
            answer = client.predict("digits", big_digit(6), "image/png")
        assert answer.status_code == 200 and "digit" in answer.json()
        assert any("overloaded (503, not queued): re-sending" in r.getMessage() for r in caplog.records)
        future.result()
    finally:
        pool.shutdown(wait=True)
    replies = read_replies(replies_file)
    by_status: dict[int, list[Reply]] = {}
    for reply in replies:
        by_status.setdefault(reply.status, []).append(reply)
    assert set(by_status) == {200, 503}, {status: len(found) for status, found in by_status.items()}
    served = statistics.median(r.answered - r.sent for r in by_status[200])
    refused_fast = statistics.median(r.answered - r.sent for r in by_status[503])
    assert refused_fast < served / 4, (refused_fast, served)  # refused at once, not after the queue
    assert worker_state(server, "digits") == before  # same process, READY: no restart


def test_tsctl_gate_says_overloaded_when_the_retries_run_out(
        server: LocalServer, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with server.client() as client:  # no worker thread at all: the same refusal, every time
        client.scale("digits", min_workers=0)
        try:
            code = tsctl.main(["--json", "gate", "digits", "--url", server.inference_url,
                               "--policy", str(config)])
        finally:
            client.scale("digits", min_workers=1, synchronous=False)
    out = json.loads(capsys.readouterr().out)
    assert code == 3 and out["exit_code"] == 3
    assert out["error"].startswith("overloaded: ") and "5 sends" in out["error"]
    assert "retrying later is safe" in out["error"]
