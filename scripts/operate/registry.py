"""What TorchServe has registered, and the model store kept in step with it.

The plumbing every operating command shares: which versions of a model are
registered and which is the default (`registered`), waiting for workers, and the
archive at model_store/MODEL.mar, which must always be the default's, since that is
what a restarted TorchServe serves (`place_archive`, `restore_archive`). An archive
is checked before TorchServe sees it (`loadable`), and `withdraw` takes back a
version that never became the default.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
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
from scripts.client.rest import TorchServeClient, TorchServeError, ready_workers
from scripts.operate.exits import Exit, RolloutFailed
from scripts.operate.rollout_log import RolloutLog


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


def withdraw(client: TorchServeClient, model: str, version: str, log: RolloutLog, step: str = "unregister",
             **fields: Any) -> None:
    """Unregister a version that did not become the default (a refused candidate, a stand-in that
    never started), if it got registered at all. Logged as `step` with `fields`; a failure is
    logged, not raised: the caller is already failing with the reason that matters."""
    try:
        now = registered(client, model)
        if version in now.versions and now.default != version:
            log.step(step, version=version, **fields, message=client.unregister(model, version))
    except (TorchServeError, requests.RequestException) as error:
        log.step(step, version=version, **fields, warning=f"could not unregister {version}: {error}")


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
