"""Worker recycling: the decision, the stand-in archive and the idle test (the YAML's recycle:
section is parsed with the rest of the YAML: tests/unit/test_policies.py).

The replacement itself (register a stand-in, switch, replace, switch back) runs
against a real TorchServe under load in tests/e2e/test_worker_faults.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from scripts.build.store import read_archive
from scripts.client.prometheus import Sample
from scripts.config.policies import RecyclePolicy
from scripts.operate import handoff, recycle
from scripts.operate.exits import Exit, RolloutFailed
from scripts.operate.recycle import WorkerSample, over_limits
from scripts.operate.rollout_log import RolloutLog


def worker(rss: float | None, age: float | None = 5.0) -> WorkerSample:
    return WorkerSample("9000", 4242, rss, age)


def test_a_worker_over_a_limit_is_a_reason_to_recycle_and_says_which() -> None:
    policy = RecyclePolicy(max_rss_mb=1000, max_age_minutes=60)
    reasons = over_limits(policy, [worker(400), worker(1200, 90)])
    assert len(reasons) == 2
    assert "1200 MiB > max_rss_mb 1000" in reasons[0] and "pid 4242" in reasons[0]
    assert "90 min old > max_age_minutes 60" in reasons[1]


def test_workers_within_the_limits_or_unmeasured_give_no_reason() -> None:
    policy = RecyclePolicy(max_rss_mb=1000)
    assert over_limits(policy, [worker(999), worker(1000)]) == []
    assert over_limits(policy, [worker(None)]) == []
    assert recycle.unmeasured(policy, [worker(None), worker(10)]) == ["worker 9000 (pid 4242)"]
    assert over_limits(RecyclePolicy(max_age_minutes=60), [worker(10**6)]) == []  # only what it sets


def test_a_local_worker_is_measured_from_its_process() -> None:
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "model_service_worker"],
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while recycle.process_memory(stand_in.pid) is None and time.monotonic() < deadline:
            time.sleep(0.05)  # until the child has exec'ed Python with that command line
        (sample,) = recycle.sample_workers({"workers": [{"id": "1", "pid": stand_in.pid, "memoryUsage": 0}]})
    finally:
        os.killpg(stand_in.pid, signal.SIGKILL)
        stand_in.wait()
    assert sample.rss_mb is not None and 1 < sample.rss_mb < 1000
    assert sample.age_minutes is not None and 0 <= sample.age_minutes < 1


def test_a_pid_that_is_no_worker_here_falls_back_to_describe() -> None:
    described = {"id": "1", "pid": os.getpid(), "memoryUsage": 300 * 1024 * 1024,
                 "startTime": "2026-01-01T00:00:00.000Z"}
    (sample,) = recycle.sample_workers({"workers": [described]}, now=1767225600.0 + 120)
    assert sample.rss_mb == 300 and sample.age_minutes == 2
    (unknown,) = recycle.sample_workers({"workers": [{**described, "memoryUsage": 0, "startTime": "?"}]})
    assert unknown.rss_mb is None and unknown.age_minutes is None


class Described:
    """The management API as check_and_recycle reads it (describe only)."""

    def __init__(self, rss_mb: float) -> None:
        self.entry = {"modelVersion": "1.0", "workers": [
            {"id": "9000", "pid": os.getpid(), "memoryUsage": int(rss_mb * 1024 * 1024)}]}

    def describe(self, model: str, version: str | None = None) -> list[dict[str, Any]]:
        return [self.entry]


@pytest.mark.parametrize(("rss_mb", "recycled"), [(1500, True), (500, False)])
def test_recycle_if_over_replaces_only_when_a_worker_is_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rss_mb: float, recycled: bool) -> None:
    calls: list[str] = []

    def replaced(client: object, store: Path, model: str, log: RolloutLog, timeout: float) -> dict[str, Any]:
        calls.append(model)
        return {"message": "replaced"}

    monkeypatch.setattr(recycle, "replace_workers", replaced)
    log = RolloutLog(tmp_path / "log.jsonl", "tabular")
    result = recycle.check_and_recycle(Described(rss_mb), tmp_path, "tabular",  # type: ignore[arg-type]
                                       RecyclePolicy(max_rss_mb=1000), log, 1)
    assert result["recycled"] is recycled and calls == (["tabular"] if recycled else [])
    assert ("1500 MiB > max_rss_mb 1000" in result["message"]) is recycled


def test_the_stand_in_is_the_same_archive_under_another_version(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "tabular.mar").write_bytes(Path("model_store/tabular.mar").read_bytes())
    copy = handoff.stand_in_archive(store, "tabular", "1.0", "tabular.mar")
    assert copy.name.startswith(".") and copy.parent == store  # hidden: load_models=all skips it
    assert read_archive(copy).version == "1.0-recycle" and read_archive(copy).name == "tabular"
    with zipfile.ZipFile(store / "tabular.mar") as original, zipfile.ZipFile(copy) as stand_in:
        assert original.namelist() == stand_in.namelist()
        for name in original.namelist():
            if name != "MAR-INF/MANIFEST.json":
                assert original.read(name) == stand_in.read(name)
        manifest = json.loads(stand_in.read("MAR-INF/MANIFEST.json"))
        assert {**manifest["model"], "modelVersion": "1.0"} == json.loads(
            original.read("MAR-INF/MANIFEST.json"))["model"]


def test_no_archive_of_the_version_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "tabular.mar").write_bytes(Path("model_store/tabular.mar").read_bytes())
    with pytest.raises(RolloutFailed) as caught:
        handoff.stand_in_archive(tmp_path, "tabular", "2.0", "tabular.mar")
    assert caught.value.code == Exit.USAGE and "make archive" in str(caught.value)


class Loaded:
    """describe and metrics as TorchServe answers them, for version_load."""

    def describe(self, model: str, version: str | None = None) -> list[dict[str, Any]]:
        return [{"workers": [{"pid": 11}], "jobQueueStatus": {"pendingRequests": 3}}]

    def metrics(self, names: tuple[str, ...] = ()) -> list[Sample]:
        return [Sample("InFlightRequests", {"WorkerPid": "11"}, 8.0),
                Sample("InFlightRequests", {"WorkerPid": "10"}, 16.0),  # a killed worker's last value
                Sample(handoff.ANSWERED, {"ModelName": "tabular", "ModelVersion": "1.0"}, 40.0),
                Sample(handoff.ANSWERED, {"ModelName": "tabular", "ModelVersion": "1.0-recycle"}, 7.0)]


def test_a_versions_load_counts_only_its_queue_its_live_workers_and_its_answers() -> None:
    load = handoff.version_load(Loaded(), "tabular", "1.0")  # type: ignore[arg-type]
    assert (load.queued, load.in_worker, load.received) == (3, 8, 40.0)
