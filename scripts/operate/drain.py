"""Drain a TorchServe: stop taking new work, let what it accepted finish, then stop it.

TorchServe has no drain of its own (pytorch/serve#2008): `torchserve --stop` and a
SIGTERM close connections that still carry requests. So a drain here is:

1. readiness goes false: the draining marker makes `scripts.serve.health` (the exec
   probe) and the keeper's HTTP /ready answer "not ready", so load balancers and
   readiness probes stop sending;
2. wait `announce` seconds for them to notice (0 for `make stop`: nothing routes by
   readiness on a laptop);
3. wait until TorchServe is idle (`wait_idle`): for `quiet` seconds in a row, no
   model has a request queued (describe: jobQueueStatus.pendingRequests), no live
   worker has a batch in progress (our handlers' InFlightRequests gauge, per worker
   pid), and no new request arrived (TorchServe's ts_inference_requests_total);
4. stop, through the caller's `stop`.

The bound on a drain is announce + timeout; `timeout` should exceed the queue's
latency budget (jobQueueSize, docs/operations.md) plus the slowest batch. A drain
that runs out of time still stops, and says how much work it cut off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from scripts.client.prometheus import Sample
from scripts.client.rest import NotFound, TorchServeClient

logger = logging.getLogger(__name__)
DRAINING_MARKER = "draining"  # in TorchServe's working directory; read by scripts/serve/health.py
IN_FLIGHT = "InFlightRequests"
RECEIVED = "ts_inference_requests_total"


@dataclass(frozen=True)
class Load:
    """What TorchServe holds at one instant."""

    queued: int      # requests waiting in the models' job queues
    in_worker: int   # requests of batches that live workers are answering
    received: float  # inference requests received since start (all models)

    @property
    def busy(self) -> bool:
        return self.queued > 0 or self.in_worker > 0


@dataclass(frozen=True)
class DrainReport:
    idle: bool        # False: the timeout cut off `left` (work still queued or in a worker)
    waited_s: float   # from the start of the drain to the stop
    left: Load


def draining_marker(server_dir: Path) -> Path:
    return server_dir / DRAINING_MARKER


def current_load(client: TorchServeClient) -> Load:
    """Queued and in-worker requests of every registered version, and the requests received."""
    queued, live_pids = 0, set()
    for entry in client.list_models():
        try:
            versions = client.describe(entry["modelName"], "all")
        except NotFound:  # unregistered since the list was read
            continue
        for version in versions:
            queued += int(version.get("jobQueueStatus", {}).get("pendingRequests", 0))
            live_pids.update(str(worker.get("pid")) for worker in version.get("workers", []))
    samples = client.metrics((IN_FLIGHT, RECEIVED))
    return Load(queued, in_worker_requests(samples, live_pids), received_requests(samples))


def in_worker_requests(samples: list[Sample], live_pids: set[str]) -> int:
    """The InFlightRequests of live workers; a killed worker's last value stays exported, so skip it."""
    return int(sum(sample.value for sample in samples
                   if sample.name == IN_FLIGHT and sample.labels.get("WorkerPid") in live_pids))


def received_requests(samples: list[Sample]) -> float:
    return sum(sample.value for sample in samples if sample.name == RECEIVED)


def wait_idle(probe: Callable[[], Load], quiet: float = 1.0, timeout: float = 60.0, poll: float = 0.1,
              clock: Callable[[], float] = time.monotonic,
              sleep: Callable[[float], None] = time.sleep) -> tuple[bool, Load]:
    """Poll until TorchServe has been idle for `quiet` seconds in a row (True), or `timeout` (False).

    `quiet` covers a request taken from the queue but not yet inside a worker's
    handle() (the batch delay, the hop to the worker): keep it above the largest
    maxBatchDelay. A request that arrives meanwhile starts the quiet period again.
    `probe` is usually `lambda: current_load(client)`.
    """
    deadline = clock() + timeout
    load = probe()
    quiet_since = None if load.busy else clock()
    while True:
        now = clock()
        if quiet_since is not None and now - quiet_since >= quiet:
            return True, load
        if now >= deadline:
            return False, load
        sleep(poll)
        before, load = load, probe()
        if load.busy or load.received != before.received:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = clock()


def hold(client: TorchServeClient, server_dir: Path, announce: float = 0.0, quiet: float = 1.0,
         timeout: float = 60.0) -> DrainReport:
    """Readiness false, wait `announce`, then wait until idle (at most `timeout`); the server stays
    up and not ready (`tsctl drain`; `tsctl drain --undo` or a stop removes the marker)."""
    started = time.monotonic()
    marker = draining_marker(server_dir)
    marker.write_text("draining: readiness is false; the server finishes what it accepted\n")
    logger.info("drain: readiness is false (%s); waiting %.1f s for load balancers", marker, announce)
    time.sleep(announce)
    idle, left = wait_idle(lambda: current_load(client), quiet=quiet, timeout=timeout)
    return DrainReport(idle, time.monotonic() - started, left)


def drain(client: TorchServeClient, server_dir: Path, stop: Callable[[], object], announce: float = 0.0,
          quiet: float = 1.0, timeout: float = 60.0) -> DrainReport:
    """`hold`, then `stop()` (`make stop`), busy or not; the marker goes with the server."""
    started = time.monotonic()
    try:
        report = hold(client, server_dir, announce, quiet, timeout)
        if report.idle:
            logger.info("drain: idle (nothing queued or in a worker for %.1f s); stopping", quiet)
        else:
            logger.warning("drain: still busy after %.0f s (%d queued, %d in workers); stopping anyway",
                           timeout, report.left.queued, report.left.in_worker)
        stop()
    finally:
        draining_marker(server_dir).unlink(missing_ok=True)
    return DrainReport(report.idle, time.monotonic() - started, report.left)
