"""Roll a model forward to a new version and back, the way a careful operator would by hand.

rollout(MODEL, VERSION):
    1. put VERSION's archive at model_store/MODEL.mar (make archive wrote it there, or
       model_store/.versions/MODEL-VERSION.mar keeps it)
    2. register it, synchronously: TorchServe starts the workers its model-config asks for
    3. wait until those workers are READY (READY means warm: handlers warm up in initialize)
    4. gate it: the golden set to /predictions/MODEL/VERSION (scripts/gate.py)
       refused -> unregister it, put the default's archive back, raise RolloutFailed
    5. make it the default: new requests to /predictions/MODEL go to it, in-flight ones finish
    6. keep the newest `keep` versions registered, unregister older ones (never the default)
rollback(MODEL): the newest registered version older than the default (or --to) becomes the
    default again, after making sure it has READY workers; needs no model API.

Every step appends one JSON line to the rollout log. Afterwards model_store/MODEL.mar
is the default's archive, so a restarted TorchServe serves what was serving.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import IntEnum
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from scripts.client import NotFound, TorchServeClient, ready_workers
from scripts.gate import ask, judge
from scripts.golden import read_golden
from scripts.mar import read_archive
from scripts.policy import RolloutPolicy
from scripts.store import keep_version, version_archive

logger = logging.getLogger(__name__)


class Exit(IntEnum):
    """What the CLI's exit code means."""

    OK = 0
    REFUSED = 1        # the gate refused the candidate, or there is nothing to roll back to
    USAGE = 2          # bad arguments, config or archive
    SERVER = 3         # TorchServe is unreachable or answered an error
    UNAUTHORIZED = 4   # token authorization is on and the key is missing or wrong
    MODEL_API_OFF = 5  # register/unregister need enable_model_api=true


class RolloutFailed(Exception):
    def __init__(self, code: Exit, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class RolloutLog:
    """One JSON line per step, appended to `path` (and logged for the person watching)."""

    path: Path
    model: str

    def step(self, step: str, **fields: Any) -> dict[str, Any]:
        record = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                  "model": self.model, "step": step, **fields}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as stream:
            stream.write(json.dumps(record) + "\n")
        logger.info("%-10s %s", step, " ".join(f"{k}={v}" for k, v in fields.items()))
        return record


@dataclass(frozen=True)
class Registered:
    """The versions TorchServe has for one model, oldest first, and which one is the default."""

    default: str | None
    versions: dict[str, dict[str, Any]]

    @property
    def ordered(self) -> list[str]:
        return sorted(self.versions, key=version_key)


def version_key(version: str) -> tuple[int, Version | str]:
    """Order versions as PEP 440 does ("1.10" after "1.9"); other strings after, by text."""
    try:
        return (0, Version(version))
    except InvalidVersion:
        return (1, version)


def registered(client: TorchServeClient, model: str) -> Registered:
    versions = {entry["modelVersion"]: entry for entry in client.describe(model, "all")}
    return Registered(client.describe(model)[0]["modelVersion"], versions)


def wait_ready(client: TorchServeClient, model: str, version: str, want: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        ready = ready_workers(client.describe(model, version))
        if ready >= want:
            return ready
        if time.monotonic() > deadline:
            raise RolloutFailed(Exit.SERVER, f"{model} {version}: {ready} of {want} workers READY after "
                                f"{timeout:.0f}s; see TorchServe's logs/model_log.log")
        time.sleep(0.5)


def place_archive(store: Path, model: str, version: str) -> Path:
    """Make model_store/MODEL.mar the archive of VERSION; its file name is what TorchServe registers."""
    target = store / f"{model}.mar"
    if target.exists() and read_archive(target).version == version:
        return target
    kept = version_archive(store, model, version)
    if not kept.exists():
        raise RolloutFailed(Exit.USAGE, f"no archive of {model} {version} in {store}: set version: "
                            f'"{version}" in configs/models/{model}.yaml and run `make archive`')
    keep_version(kept, target)
    return target


def restore_archive(store: Path, model: str, version: str | None, log: RolloutLog) -> None:
    """Put the default's archive back at model_store/MODEL.mar, so a restart serves the default."""
    if version is None:
        return
    try:
        log.step("archive", version=version, path=str(place_archive(store, model, version)))
    except RolloutFailed:
        log.step("archive", version=version, warning=f"no kept archive of {version}: {store}/{model}.mar "
                 "is another version, and a restarted TorchServe would serve that one")


def rollout(client: TorchServeClient, store: Path, model: str, version: str, policy: RolloutPolicy,
            log: RolloutLog, ready_timeout: float = 600.0) -> dict[str, Any]:
    """Register, wait, gate, switch, prune; raise RolloutFailed when a step refuses."""
    before = _registered_or_none(client, model)
    if version in before.versions:
        raise RolloutFailed(Exit.USAGE, f"{model} {version} is registered already (default {before.default}):"
                            f" to serve it run `tsctl rollback {model} --to {version}`")
    golden = read_golden(policy.golden)
    archive = read_archive(place_archive(store, model, version))
    log.step("start", version=version, default=before.default, archive=str(archive.path))
    started = time.monotonic()
    try:
        log.step("register", version=version, message=client.register(archive.path.name))
        log.step("ready", version=version, workers=wait_ready(client, model, version, archive.workers[0],
                                                              ready_timeout))
    except Exception:
        restore_archive(store, model, before.default, log)
        raise
    verdict = judge(policy, golden, ask(client, model, version, golden),
                    ask(client, model, before.default, golden) if policy.compare and before.default else None)
    log.step("gate", version=version, passed=verdict.passed, **verdict.figures, reasons=verdict.reasons)
    if not verdict.passed:
        log.step("unregister", version=version, message=client.unregister(model, version))
        restore_archive(store, model, before.default, log)
        raise RolloutFailed(Exit.REFUSED, f"the gate refused {model} {version}: " + "; ".join(verdict.reasons)
                            + f". {before.default or 'No version'} stays the default.")
    log.step("default", version=version, previous=before.default, message=client.set_default(model, version))
    pruned = prune(client, model, policy.keep, log)
    return log.step("done", version=version, previous=before.default, pruned=pruned,
                    seconds=round(time.monotonic() - started, 1), gate=verdict.figures)


def prune(client: TorchServeClient, model: str, keep: int, log: RolloutLog) -> list[str]:
    """Unregister all but the newest `keep` versions; the default is always kept."""
    now = registered(client, model)
    newest = set(now.ordered[-keep:]) | {now.default}
    pruned = [version for version in now.ordered if version not in newest]
    for version in pruned:
        log.step("prune", version=version, message=client.unregister(model, version))
    return pruned


def rollback(client: TorchServeClient, store: Path, model: str, log: RolloutLog, to: str | None = None,
             ready_timeout: float = 600.0) -> dict[str, Any]:
    """Make the previous kept version (or `to`) the default again."""
    now = registered(client, model)
    older = [version for version in now.ordered if version_key(version) < version_key(now.default or "")]
    target = to or (older[-1] if older else None)
    if target is None or target not in now.versions or target == now.default:
        why = f"; {to} is not another registered version" if to else ""
        raise RolloutFailed(Exit.REFUSED, f"nothing to roll back to: {model} has {now.ordered} registered, "
                            f"default {now.default}{why}")
    log.step("start", version=target, default=now.default, action="rollback")
    entry = now.versions[target]
    want = max(1, int(entry.get("minWorkers", 1)))
    if ready_workers([entry]) < want:  # a kept version scaled down: bring its workers back first
        most = int(entry.get("maxWorkers", want))
        log.step("scale", version=target, message=client.scale(model, target, min_workers=want,
                                                               max_workers=most))
    log.step("ready", version=target, workers=wait_ready(client, model, target, want, ready_timeout))
    log.step("default", version=target, previous=now.default, message=client.set_default(model, target))
    restore_archive(store, model, target, log)
    return log.step("done", version=target, previous=now.default, action="rollback")


def _registered_or_none(client: TorchServeClient, model: str) -> Registered:
    try:
        return registered(client, model)
    except NotFound:
        return Registered(None, {})
