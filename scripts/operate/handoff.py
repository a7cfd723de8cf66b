"""Replace every worker of a model's default version without failing a request.

TorchServe 0.12 cannot retire one chosen worker safely (checked against its source
and a live server):
- scale-down removes the NEWEST workers (WorkLoadManager.modelChanged), so "scale up,
  then down" retires the fresh worker and keeps the bloated one;
- a worker removed while it holds a batch may fail it (500 "Worker died.": the
  worker thread's own cleanup races the re-queue in WorkerThread.shutdown);
- a worker process that exits by itself is restarted in place, but its frontend
  thread may already have taken the next batch from the queue: that batch fails,
  or, while it is still being gathered, is dropped without an answer.
A worker is safe to remove only while it holds nothing, and under load that happens
only once no new work can reach it. Requests reach a worker through its version's
queue, and set-default moves new requests to another version while queued ones
finish where they are. So the handoff is:

    1. copy the default version V's archive as a stand-in version "V-recycle"
       (the same files, only the manifest's version differs), register it with V's
       worker count, wait READY (READY means warm)
    2. set-default V-recycle: new requests go to it; V finishes what it holds
    3. wait until V is idle (`wait_version_idle`), scale V to 0 (nothing is lost:
       its workers hold nothing) and back to its worker count: fresh processes
    4. set-default V, wait until the stand-in is idle, unregister it, delete its copy

It needs the model API (register/unregister) and twice V's memory for a while.
Requests to /predictions/MODEL/V itself (not the default route) get 503 while V has
no worker (step 3, one worker start); during steps 2-4 answers say X-Model-Version:
V-recycle. If a run stops half-way, running it again finishes the handoff.
"""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path
from typing import Any

from scripts.build.store import version_archive
from scripts.client.rest import TorchServeClient
from scripts.operate.drain import IN_FLIGHT, Load, in_worker_requests, wait_idle
from scripts.operate.exits import Exit, RolloutFailed
from scripts.operate.registry import archive_of, registered, wait_ready, withdraw
from scripts.operate.rollout_log import RolloutLog

STAND_IN = "-recycle"  # suffix of the stand-in version; its archive is hidden (load_models skips it)
ANSWERED = "HandlerResponses_total"  # our handlers' counter of answered requests


def version_load(client: TorchServeClient, model: str, version: str) -> Load:
    """One version's queue, the batches its live workers hold, and (as `received`) the requests its
    handlers have answered: after the switch no new request reaches it, so a new answer means it
    was still busy."""
    (entry,) = client.describe(model, version)
    pids = {str(worker.get("pid")) for worker in entry.get("workers", [])}
    samples = client.metrics((IN_FLIGHT, ANSWERED))
    answered = sum(s.value for s in samples if s.name == ANSWERED and s.labels.get("ModelName") == model
                   and s.labels.get("ModelVersion") == version)
    return Load(int(entry.get("jobQueueStatus", {}).get("pendingRequests", 0)),
                in_worker_requests(samples, pids), answered)


def wait_version_idle(client: TorchServeClient, model: str, version: str, quiet: float,
                      timeout: float) -> Load:
    """Return once `version` has been idle for `quiet` seconds in a row; RolloutFailed after `timeout`.

    Idle: nothing queued, no batch in a worker, and no request answered meanwhile.
    `quiet` must exceed maxBatchDelay: it covers requests the frontend took from the
    queue but has not yet handed to the worker.
    """
    idle, load = wait_idle(lambda: version_load(client, model, version), quiet=quiet, timeout=timeout)
    if not idle:
        raise RolloutFailed(Exit.SERVER, f"{model} {version} was still busy after {timeout:.0f}s "
                            f"({load.queued} queued, {load.in_worker} in a worker)")
    return load


def stand_in_archive(store: Path, model: str, version: str, model_url: str) -> Path:
    """A copy of VERSION's archive whose manifest says VERSION-recycle, hidden at the top of the
    store (TorchServe registers only file names of its store, and load_models=all skips hidden ones)."""
    source = next((path for path in (store / model_url, version_archive(store, model, version))
                   if archive_of(path, model, version) is not None), None)
    if source is None:
        raise RolloutFailed(Exit.USAGE, f"no archive of {model} {version} in {store} (tried {model_url} and "
                            f"{version_archive(store, model, version).relative_to(store)}): rebuild it "
                            "with `make archive`")
    target = store / f".{model}-{version}{STAND_IN}.mar"
    staged = target.with_name(target.name + ".new")
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(staged, "w", zipfile.ZIP_STORED) as copy:
        for member in original.infolist():
            data = original.read(member)
            if member.filename == "MAR-INF/MANIFEST.json":
                manifest = json.loads(data)
                manifest["model"]["modelVersion"] = version + STAND_IN
                data = json.dumps(manifest, indent=2).encode()
            copy.writestr(member.filename, data)  # stored: a copy of minilm in a second, not a minute
    staged.replace(target)
    return target


def replace_workers(client: TorchServeClient, store: Path, model: str, log: RolloutLog,
                    timeout: float = 300.0) -> dict[str, Any]:
    """Replace the default version's workers by fresh processes (steps 1-4 above)."""
    started = time.monotonic()
    now = registered(client, model)
    if now.default is None:
        raise RolloutFailed(Exit.USAGE, f"{model} has no default version to recycle")
    version = now.default.removesuffix(STAND_IN)  # a run that stopped half-way left the stand-in default
    if version not in now.versions:
        raise RolloutFailed(Exit.USAGE, f"{model}: the stand-in {now.default} is the default but {version} "
                            f"is gone; register {version} again (`tsctl register`) and run this again")
    entry = now.versions[now.default]  # V, or the stand-in started with V's worker counts
    stand_in = version + STAND_IN
    workers = max(int(entry["minWorkers"]), len(entry["workers"]), 1)
    quiet = max(1.0, 5 * int(entry.get("maxBatchDelay", 100)) / 1000)
    old_pids = _pids(now.versions[version])
    if now.default == version:
        archive = _start_stand_in(client, store, model, version, entry, workers, log, timeout)
    else:
        archive = store / f".{model}-{version}{STAND_IN}.mar"
        log.step("recycle", version=version, phase="resume", message=f"{stand_in} is the default already")
    wait_version_idle(client, model, version, quiet, timeout)
    log.step("recycle", version=version, phase="idle", workers=old_pids)
    log.step("recycle", version=version, phase="stop", message=client.scale(model, version, min_workers=0))
    log.step("recycle", version=version, phase="start", message=client.scale(
        model, version, min_workers=workers, max_workers=max(int(entry["maxWorkers"]), workers)))
    wait_ready(client, model, version, workers, timeout)
    log.step("recycle", version=version, phase="default", message=client.set_default(model, version))
    wait_version_idle(client, model, stand_in, quiet, timeout)
    log.step("recycle", version=stand_in, phase="unregister", message=client.unregister(model, stand_in))
    archive.unlink(missing_ok=True)
    new_pids = _pids(client.describe(model, version)[0])
    seconds = round(time.monotonic() - started, 1)
    log.step("recycle", version=version, phase="done", workers=new_pids, seconds=seconds)
    return {"model": model, "version": version, "old_pids": old_pids, "new_pids": new_pids,
            "seconds": seconds, "message": f"{model} {version}: workers {old_pids} replaced by {new_pids} "
            f"in {seconds:.1f}s, no request dropped (stand-in {stand_in} served meanwhile)"}


def _start_stand_in(client: TorchServeClient, store: Path, model: str, version: str,
                    entry: dict[str, Any], workers: int, log: RolloutLog, timeout: float) -> Path:
    """Steps 1-2; undone (stand-in unregistered, copy deleted) if they fail, so V keeps serving."""
    stand_in = version + STAND_IN
    archive = stand_in_archive(store, model, version, str(entry.get("modelUrl", f"{model}.mar")))
    try:
        log.step("recycle", version=stand_in, phase="register",
                 message=client.register(archive.name, initial_workers=workers))
        wait_ready(client, model, stand_in, workers, timeout)
        log.step("recycle", version=stand_in, phase="default", message=client.set_default(model, stand_in))
    except BaseException:
        withdraw(client, model, stand_in, log, "recycle", phase="withdraw")  # it served no request
        archive.unlink(missing_ok=True)
        raise
    return archive


def _pids(entry: dict[str, Any]) -> list[int]:
    return sorted(int(worker["pid"]) for worker in entry.get("workers", []))
