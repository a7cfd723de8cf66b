"""When to replace a model's workers: the `recycle:` section of its YAML, checked from outside.

    recycle:
      max_rss_mb: 1500        # a worker's resident memory, its child processes included (MiB)
      max_age_minutes: 1440   # a worker process older than this

Either key or both; the YAML reader parses it (scripts/config/policies.py).
`tsctl recycle MODEL --if-over` measures every worker of the default version and,
when one is over a limit, replaces them all without failing a request
(scripts/operate/handoff.py); `tsctl recycle MODEL` replaces them at once;
`tsctl watch` checks every model with a policy every --interval seconds.

The check runs outside the server because a worker cannot replace itself without
losing requests, and because a slow leak (a growing cache, a fragmented heap) is
cured by a fresh process, not by anything a handler could do. Memory is read with
psutil from the worker's pid (TorchServe's describe names it) when the worker runs
on this machine, else from describe's memoryUsage (refreshed every
metric_time_interval, 60 s by default; 0 until the first refresh).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from scripts.client.rest import TorchServeClient, TorchServeError
from scripts.config.files import ConfigError
from scripts.config.model import load_spec
from scripts.config.policies import RecyclePolicy
from scripts.operate.exits import RolloutFailed
from scripts.operate.handoff import replace_workers
from scripts.operate.rollout_log import RolloutLog

logger = logging.getLogger(__name__)
COMMANDS = ("recycle", "watch")  # the tsctl subcommands this module runs
WORKER_COMMAND = "model_service_worker"  # in a TorchServe worker's command line
MIB = 1024 * 1024


@dataclass(frozen=True)
class WorkerSample:
    """One worker as measured now; None where it could not be measured."""

    worker: str  # TorchServe's worker id
    pid: int
    rss_mb: float | None
    age_minutes: float | None


def over_limits(policy: RecyclePolicy, workers: list[WorkerSample]) -> list[str]:
    """Why the workers should be replaced: one line per limit a worker is over; [] when none is."""
    reasons = []
    for worker in workers:
        name = f"worker {worker.worker} (pid {worker.pid})"
        if policy.max_rss_mb is not None and worker.rss_mb is not None and worker.rss_mb > policy.max_rss_mb:
            reasons.append(f"{name} holds {worker.rss_mb:.0f} MiB > max_rss_mb {policy.max_rss_mb:g}")
        if (policy.max_age_minutes is not None and worker.age_minutes is not None
                and worker.age_minutes > policy.max_age_minutes):
            reasons.append(f"{name} is {worker.age_minutes:.0f} min old > max_age_minutes "
                           f"{policy.max_age_minutes:g}")
    return reasons


def unmeasured(policy: RecyclePolicy, workers: list[WorkerSample]) -> list[str]:
    """Workers a limit could not be checked on (so the operator knows the check saw nothing)."""
    return [f"worker {w.worker} (pid {w.pid})" for w in workers
            if (policy.max_rss_mb is not None and w.rss_mb is None)
            or (policy.max_age_minutes is not None and w.age_minutes is None)]


def sample_workers(description: dict[str, Any], now: float | None = None) -> list[WorkerSample]:
    """Every worker of one described version: from its process here, else from describe."""
    now = time.time() if now is None else now
    return [_sample(worker, now) for worker in description.get("workers", [])]


def _sample(worker: dict[str, Any], now: float) -> WorkerSample:
    pid = int(worker.get("pid", -1))
    local = process_memory(pid)
    if local is not None:
        rss, created = local
        return WorkerSample(str(worker.get("id")), pid, rss / MIB, (now - created) / 60)
    reported = int(worker.get("memoryUsage") or 0)
    started = _timestamp(worker.get("startTime"))  # the worker slot's start: a restart keeps it
    return WorkerSample(str(worker.get("id")), pid, reported / MIB if reported else None,
                        (now - started) / 60 if started else None)


def process_memory(pid: int) -> tuple[int, float] | None:
    """(resident bytes of the worker and its children, its start time), if it is a TorchServe
    worker on this machine; None otherwise (a remote server, or the pid is gone or reused)."""
    import psutil  # TorchServe itself depends on it

    try:
        process = psutil.Process(pid)
        if not any(WORKER_COMMAND in part for part in process.cmdline()):
            return None
        family = [process, *process.children(recursive=True)]
        return sum(member.memory_info().rss for member in family), process.create_time()
    except (psutil.Error, ValueError):
        return None


def _timestamp(text: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def check(client: TorchServeClient, model: str, policy: RecyclePolicy) -> dict[str, Any]:
    """The default version's workers measured against the policy."""
    (entry,) = client.describe(model)
    workers = sample_workers(entry)
    return {"model": model, "version": entry["modelVersion"], "workers": [asdict(w) for w in workers],
            "reasons": over_limits(policy, workers), "unmeasured": unmeasured(policy, workers)}


def check_and_recycle(client: TorchServeClient, store: Path, model: str, policy: RecyclePolicy | None,
                      log: RolloutLog, timeout: float) -> dict[str, Any]:
    """`tsctl recycle`: with a policy, replace the workers only when one is over a limit."""
    if policy is None:
        return {**replace_workers(client, store, model, log, timeout), "recycled": True,
                "reasons": ["asked to"]}
    checked = check(client, model, policy)
    if checked["unmeasured"]:
        logger.warning("%s: could not measure %s", model, ", ".join(checked["unmeasured"]))
    if not checked["reasons"]:
        sizes = ", ".join(f"pid {w['pid']}: {_mib(w['rss_mb'])}, {_minutes(w['age_minutes'])}"
                          for w in checked["workers"])
        return {**checked, "recycled": False,
                "message": f"{model} {checked['version']}: every worker within {policy} ({sizes})"}
    logger.info("%s: %s", model, "; ".join(checked["reasons"]))
    done = replace_workers(client, store, model, log, timeout)
    return {**checked, **done, "recycled": True,
            "message": "; ".join(checked["reasons"]) + f"\n{done['message']}"}


def watch(client: TorchServeClient, store: Path, models: list[str], config_dir: Path, log_path: Path,
          interval: float, timeout: float) -> dict[str, Any]:
    """Check every model that has a recycle policy every `interval` seconds, until Ctrl-C."""
    # Named models must have a YAML; of the served ones, those without a YAML are skipped.
    names = models or [entry["modelName"] for entry in client.list_models()
                       if (config_dir / f"{entry['modelName']}.yaml").is_file()]
    policies = {name: load_spec(config_dir / f"{name}.yaml").recycle for name in names}
    watched = {name: policy for name, policy in policies.items() if policy is not None}
    if not watched:
        raise ConfigError(config_dir, "recycle", f"none of {names} has a recycle: section",
                          "add recycle: {max_rss_mb: ...} to the model's YAML (scripts/config/policies.py)")
    logger.info("watching %s every %.0f s", ", ".join(f"{n} {p}" for n, p in watched.items()), interval)
    rounds = 0
    try:
        while True:
            for name, policy in watched.items():
                try:
                    log = RolloutLog(log_path, name)
                    logger.info("%s", check_and_recycle(client, store, name, policy, log, timeout)["message"])
                except (RolloutFailed, TorchServeError, requests.RequestException) as error:
                    logger.error("%s: %s (checking again in %.0f s)", name, error, interval)
            rounds += 1
            time.sleep(interval)
    except KeyboardInterrupt:
        return {"message": f"watch stopped after {rounds} rounds", "rounds": rounds}


def run(client: TorchServeClient, store: Path, args: argparse.Namespace) -> dict[str, Any]:
    """tsctl recycle / tsctl watch."""
    if args.command == "watch":
        return watch(client, store, args.models, args.config_dir, args.log, args.interval, args.timeout_s)
    policy = None
    if args.if_over:
        path = args.config or Path(f"configs/models/{args.model}.yaml")
        policy = load_spec(path).recycle
        if policy is None:
            raise ConfigError(path, "recycle", "missing: --if-over needs limits", "add recycle: "
                              "{max_rss_mb: ...} (scripts/config/policies.py), or drop --if-over")
    return check_and_recycle(client, store, args.model, policy, RolloutLog(args.log, args.model),
                             args.timeout_s)


def add_commands(commands: Any) -> None:
    """The recycle and watch subcommands of tsctl."""
    once = commands.add_parser("recycle", help="replace a model's workers by fresh ones, losing no request")
    once.add_argument("model")
    once.add_argument("--if-over", action="store_true",
                      help="only when a worker is over a limit of the YAML's recycle: section")
    once.add_argument("--config", type=Path, help="default: configs/models/MODEL.yaml")
    loop = commands.add_parser("watch", help="recycle --if-over every --interval seconds, until Ctrl-C")
    loop.add_argument("models", nargs="*", help="default: every served model with a recycle: section")
    loop.add_argument("--interval", type=float, default=60.0, help="seconds between checks (default 60)")
    loop.add_argument("--config-dir", type=Path, default=Path("configs/models"))
    for command in (once, loop):
        command.add_argument("--timeout-s", type=float, default=300.0,
                             help="per step: workers READY, a version idle (default 300)")


def _mib(value: float | None) -> str:
    return "RSS unknown" if value is None else f"{value:.0f} MiB"


def _minutes(value: float | None) -> str:
    return "age unknown" if value is None else f"{value:.0f} min"
