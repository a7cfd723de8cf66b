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

Every step appends one JSON line to the rollout log (rollout_log.py). Afterwards
model_store/MODEL.mar is the default's archive, so a restarted TorchServe serves what was
serving. Registry queries and the archive placement are registry.py's; the exit codes,
exits.py's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from scripts.client.rest import NotFound, TorchServeClient, TorchServeError, ready_workers
from scripts.config.policies import RolloutPolicy
from scripts.operate.exits import Exit, RolloutFailed
from scripts.operate.gate import Verdict, ask, judge
from scripts.operate.golden import GoldenRequest, read_golden
from scripts.operate.registry import (
    Registered,
    place_archive,
    registered,
    restore_archive,
    version_key,
    wait_ready,
    withdraw,
)
from scripts.operate.rollout_log import RolloutLog


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
        withdraw(client, model, version, log)
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
