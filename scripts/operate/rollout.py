"""Roll a model forward to a new version and back, the way a careful operator would by hand.

rollout(MODEL, VERSION):
    1. put VERSION's archive at model_store/MODEL.mar (make archive wrote it there, or
       model_store/.versions/MODEL-VERSION.mar keeps it)
    2. register it, synchronously: TorchServe starts the workers its model-config asks for
    3. wait until those workers are READY (READY means warm: handlers warm up in initialize)
    4. gate it: the golden set to /predictions/MODEL/VERSION (scripts/operate/gate.py)
       refused -> unregister it, put the default's archive back, raise RolloutFailed
    5. make it the default: new requests to /predictions/MODEL go to it, in-flight ones finish
    6. keep the newest `keep` versions registered, unregister older ones (never the default)
rollback(MODEL): the version that was the default before this one (from the rollout log;
    else the newest registered version older than the default; or --to) becomes the default
    again, after making sure it has READY workers; needs no model API.

Every step appends one JSON line to the rollout log. Afterwards model_store/MODEL.mar
is the default's archive, so a restarted TorchServe serves what was serving.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from enum import IntEnum
from pathlib import Path
from typing import Any

import requests
from packaging.version import InvalidVersion, Version

from scripts.build.store import (
    ArchiveError,
    ArchiveInfo,
    check_archive,
    keep_version,
    read_archive,
    version_archive,
)
from scripts.client.rest import NotFound, TorchServeClient, TorchServeError, ready_workers
from scripts.operate.gate import Verdict, ask, judge
from scripts.operate.golden import GoldenRequest, read_golden
from scripts.operate.policy import RolloutPolicy

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

    def previous_default(self, current: str | None) -> str | None:
        """What was the default before a rollout made `current` the default (by this log's last
        such switch; switches made by rollback are skipped, so rollback twice goes back twice)."""
        switches = [record for record in self.records() if record.get("step") == "default"
                    and record.get("version") == current and record.get("action") != "rollback"]
        return str(switches[-1]["previous"]) if switches and switches[-1].get("previous") else None

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = self.path.read_text().splitlines()
        return [record for record in map(json.loads, lines) if record.get("model") == self.model]

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


def place_archive(store: Path, model: str, version: str) -> ArchiveInfo:
    """Make model_store/MODEL.mar the archive of VERSION; its file name is what TorchServe registers."""
    target = store / f"{model}.mar"
    placed = archive_of(target, model, version)
    if placed is not None:
        return loadable(placed.path)
    kept = version_archive(store, model, version)
    if not kept.exists():
        raise RolloutFailed(Exit.USAGE, f"no archive of {model} {version} in {store}: set version: "
                            f'"{version}" in configs/models/{model}.yaml and run `make archive`')
    found = loadable(kept)  # before it replaces the default's archive at the top of the store
    if (found.name, found.version) != (model, version):
        raise RolloutFailed(Exit.USAGE, f"{kept} is not an archive of {model} {version}: rebuild it with "
                            "`make archive`")
    keep_version(kept, target)
    return replace(found, path=target)


def loadable(path: Path) -> ArchiveInfo:
    """`path` checked as TorchServe would need it; a damaged or foreign archive is refused (exit 2)
    before TorchServe sees it: it would register it anyway, and its workers would die in a loop."""
    try:
        return check_archive(path)
    except ArchiveError as error:
        raise RolloutFailed(Exit.USAGE, str(error)) from None


def archive_of(path: Path, model: str, version: str) -> ArchiveInfo | None:
    """What `path` holds, if it is an archive of this model and version."""
    try:
        info = read_archive(path)
    except ValueError:
        return None
    return info if (info.name, info.version) == (model, version) else None


def register_archive(client: TorchServeClient, store: Path, file: str) -> dict[str, Any]:
    """`tsctl register`: check the archive, register it, then settle the store so a restart serves
    the default: the archive is kept as .versions/NAME-VERSION.mar, a second top-level archive
    of the model moves there, and model_store/NAME.mar is the default's archive."""
    info = loadable(store / file)
    message = client.register(file)
    kept = version_archive(store, info.name, info.version)
    keep_version(info.path, kept)
    notes = [f"kept as {kept}"]
    if file != f"{info.name}.mar":
        info.path.unlink()
        notes.append(f"removed {file} from the top of the store, where TorchServe would load it at start")
    default = registered(client, info.name).default
    try:
        notes.append(f"{place_archive(store, info.name, default or info.version).path} is the default's "
                     f"({default}), which a restart serves")
    except RolloutFailed:
        notes.append(f"warning: no kept archive of the default {default}: a restart would not serve it")
    return {"message": message, "model": info.name, "version": info.version, "default": default,
            "store": notes}


def restore_archive(store: Path, model: str, version: str | None, log: RolloutLog) -> None:
    """Put the default's archive back at model_store/MODEL.mar, so a restart serves the default."""
    if version is None:
        return
    try:
        log.step("archive", version=version, path=str(place_archive(store, model, version).path))
    except RolloutFailed:
        log.step("archive", version=version, warning=f"no kept archive of {version}: {store}/{model}.mar "
                 "is another version, and a restarted TorchServe would serve that one")


def rollout(client: TorchServeClient, store: Path, model: str, version: str, policy: RolloutPolicy,
            log: RolloutLog, ready_timeout: float = 600.0) -> dict[str, Any]:
    """Register, wait, gate, switch, prune; raise RolloutFailed when a step refuses.

    Whatever fails (or is interrupted) before the switch, the candidate is unregistered
    and model_store/MODEL.mar is the default's archive again.
    """
    before = _check_candidate(client, model, version)
    golden = read_golden(policy.golden)
    archive = place_archive(store, model, version)
    log.step("start", version=version, default=before.default, archive=str(archive.path))
    started = time.monotonic()
    try:
        verdict = _register_and_gate(client, model, version, archive.workers[0], policy, golden,
                                     before.default, log, ready_timeout)
        if not verdict.passed:
            raise RolloutFailed(Exit.REFUSED, f"the gate refused {model} {version}: "
                                + "; ".join(verdict.reasons) + f". {before.default} stays the default.")
        log.step("default", version=version, previous=before.default,
                 message=client.set_default(model, version))
    except BaseException:
        _withdraw(client, model, version, log)
        restore_archive(store, model, before.default, log)
        raise
    pruned = prune(client, model, policy.keep, log, also_keep=before.default)
    return log.step("done", version=version, previous=before.default, pruned=pruned,
                    seconds=round(time.monotonic() - started, 1), gate=verdict.figures)


def _check_candidate(client: TorchServeClient, model: str, version: str) -> Registered:
    """The model as registered now; refuse what a rollout cannot do."""
    if version_key(version)[0] != 0:
        raise RolloutFailed(Exit.USAGE, f"version {version!r} is not a PEP 440 version, so it cannot be "
                            'ordered for prune and rollback: use e.g. version: "2.0" or "2.0.1"')
    try:
        before = registered(client, model)
    except NotFound:
        raise RolloutFailed(Exit.USAGE, f"{model} is not being served, so there is nothing to roll out from: "
                            f"serve a first version with `tsctl register {model}.mar`") from None
    if any(version_key(v) == version_key(version) for v in before.versions):
        raise RolloutFailed(Exit.USAGE, f"{model} {version} is registered already (default {before.default}):"
                            f" to serve it run `tsctl rollback {model} --to {version}`")
    return before


def _register_and_gate(client: TorchServeClient, model: str, version: str, workers: int,
                       policy: RolloutPolicy, golden: list[GoldenRequest], default: str | None,
                       log: RolloutLog, ready_timeout: float) -> Verdict:
    log.step("register", version=version, message=client.register(f"{model}.mar"))
    log.step("ready", version=version, workers=wait_ready(client, model, version, workers, ready_timeout))
    compared = ask(client, model, default, golden) if policy.compare and default else None
    verdict = judge(policy, golden, ask(client, model, version, golden), compared)
    log.step("gate", version=version, passed=verdict.passed, **verdict.figures, reasons=verdict.reasons)
    return verdict


def _withdraw(client: TorchServeClient, model: str, version: str, log: RolloutLog) -> None:
    """Unregister a candidate that did not become the default, if it got registered at all."""
    try:
        now = registered(client, model)
        if version in now.versions and now.default != version:
            log.step("unregister", version=version, message=client.unregister(model, version))
    except (TorchServeError, requests.RequestException) as error:
        log.step("unregister", version=version, warning=f"could not unregister the candidate: {error}")


def prune(client: TorchServeClient, model: str, keep: int, log: RolloutLog,
          also_keep: str | None = None) -> list[str]:
    """Unregister all but the newest `keep` versions; the default and `also_keep` (the previous
    default, what rollback returns to) always stay. A failure is logged, not raised: the rollout
    itself is done by then."""
    now = registered(client, model)
    kept = set(now.ordered[-keep:]) | {now.default, also_keep}
    pruned = []
    for version in (v for v in now.ordered if v not in kept):
        try:
            log.step("prune", version=version, message=client.unregister(model, version))
            pruned.append(version)
        except TorchServeError as error:
            log.step("prune", version=version, warning=str(error))
    return pruned


def rollback_target(now: Registered, log: RolloutLog) -> str | None:
    """The default before the current one, from the rollout log, if it is still registered;
    else the newest registered version older than the default."""
    previous = log.previous_default(now.default)
    if previous in now.versions:
        return previous
    older = [v for v in now.ordered if now.default and version_key(v) < version_key(now.default)]
    return older[-1] if older else None


def rollback(client: TorchServeClient, store: Path, model: str, log: RolloutLog, to: str | None = None,
             ready_timeout: float = 600.0) -> dict[str, Any]:
    """Make the previous default (or `to`) the default again; needs no model API."""
    now = registered(client, model)
    target = to or rollback_target(now, log)
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
    log.step("default", version=target, previous=now.default, action="rollback",
             message=client.set_default(model, target))
    restore_archive(store, model, target, log)
    return log.step("done", version=target, previous=now.default, action="rollback")


def _registered_or_none(client: TorchServeClient, model: str) -> Registered:
    try:
        return registered(client, model)
    except NotFound:
        return Registered(None, {})
