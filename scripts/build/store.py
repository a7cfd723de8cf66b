"""The model store: its layout beyond what TorchServe reads, and what a .mar says about itself.

model_store/NAME.mar is what TorchServe loads at start (load_models=all) and what
a registration names (TorchServe takes only a url's file name, in the store).
model_store/.versions/NAME-VERSION.mar keeps each version `make archive` built;
the directory is hidden, so TorchServe never loads it by itself.

An archive is a zip: `read_archive` gives its name, version and model-config.
`check_archive` also proves TorchServe can load it: a sound zip (every member's CRC),
MAR-INF/MANIFEST.json with a model name, version and handler, and the handler file
and model-config inside. TorchServe itself registers a damaged archive anyway, and its
workers then die in a loop with an unrelated ModuleNotFoundError.
`startup_archives` lists what load_models=all registers; `check_startup` refuses a
damaged one and two archives of one model there, which TorchServe would register in
directory order, the first becoming the default.

    python -m scripts.build.store check model_store/*.mar   # exit 2 naming each bad archive
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

VERSIONS = ".versions"


def version_archive(store: Path, name: str, version: str) -> Path:
    """Where the archive of one version of a model is kept."""
    return store / VERSIONS / f"{name}-{version}.mar"


def keep_version(archive: Path, kept: Path) -> None:
    """Copy `archive` to `kept` (replacing what was there) in one rename.

    A copy, not a hard link: a later `cp` onto one name would rewrite both.
    """
    kept.parent.mkdir(parents=True, exist_ok=True)
    staged = kept.with_name(f".{kept.name}.new")
    shutil.copyfile(archive, staged)
    staged.replace(kept)


@dataclass(frozen=True)
class ArchiveInfo:
    path: Path
    name: str
    version: str
    model_config: dict[str, Any]
    handler: str = ""

    @property
    def workers(self) -> tuple[int, int]:
        """(minWorkers, maxWorkers) as TorchServe will start them on registration."""
        low = int(self.model_config.get("minWorkers", 1))
        return low, int(self.model_config.get("maxWorkers", low))


def read_archive(path: Path) -> ArchiveInfo:
    """The manifest and model-config of `path`; ValueError when it is not a model archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
            names = set(archive.namelist())
            config_name = manifest["model"].get("configFile", "model-config.yaml")
            config = yaml.safe_load(archive.read(config_name)) if config_name in names else {}
            model = manifest["model"]
            return ArchiveInfo(path, str(model["modelName"]), str(model["modelVersion"]), dict(config or {}))
    except (OSError, KeyError, TypeError, zipfile.BadZipFile, json.JSONDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"{path} is not a readable model archive ({error!r})") from None


MANIFEST = "MAR-INF/MANIFEST.json"
REBUILD = ("rebuild it with `make archive` (python -m scripts.build.archive configs/models/NAME.yaml "
           "--force) or copy it again from where it was built")
FOREIGN = "only .mar files from `make archive` (torch-model-archiver) belong in the model store"
ONE_DEFAULT = ("keep candidates in {store}/.versions/ (`tsctl register` and `tsctl rollout` put them there); "
               "only {store}/{name}.mar at the top of the store is the default")


class ArchiveError(ValueError):
    """An archive TorchServe would register but not load; the message names the file, the fault, the fix."""


def check_archive(path: Path, verify_data: bool = True) -> ArchiveInfo:
    """What `path` holds, once it is proven loadable; ArchiveError otherwise.

    verify_data reads every member to check its CRC (about 1.5 s for minilm's 83 MB);
    without it only the zip's directory, the manifest and the model-config are read.
    """
    if not path.is_file():
        raise ArchiveError(f"{path}: no such file; fix: give the path of a .mar in the model store")
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip() if verify_data else None
            if damaged is not None:
                raise ArchiveError(f"{path}: damaged: member {damaged} fails its CRC check; fix: {REBUILD}")
            return _checked_contents(path, archive)
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise ArchiveError(f"{path}: not a readable zip, so not a model archive (truncated or damaged: "
                           f"{error}); fix: {REBUILD}") from None
    except OSError as error:
        raise ArchiveError(f"{path}: cannot be read ({error.strerror or error}); fix: check the file's "
                           "permissions and the disk") from None


def _checked_contents(path: Path, archive: zipfile.ZipFile) -> ArchiveInfo:
    names = set(archive.namelist())
    if MANIFEST not in names:
        raise ArchiveError(f"{path}: a zip without {MANIFEST}, so not a model archive (a foreign file?); "
                           f"fix: {FOREIGN}")
    try:
        manifest = json.loads(archive.read(MANIFEST))
    except (ValueError, UnicodeDecodeError) as error:
        raise ArchiveError(f"{path}: {MANIFEST} is not valid JSON ({error}); fix: {REBUILD}") from None
    model = manifest.get("model") if isinstance(manifest, dict) else None
    model = model if isinstance(model, dict) else {}
    for key in ("modelName", "modelVersion", "handler"):
        if not isinstance(model.get(key), str) or not model[key].strip():
            raise ArchiveError(f"{path}: {MANIFEST} gives no model.{key}; fix: {REBUILD}")
    handler_file = handler_module_file(model["handler"])
    if handler_file not in names:
        raise ArchiveError(f"{path}: the handler {model['handler']!r} names {handler_file}, which is not in "
                           f"the archive; fix: {REBUILD} (this toolkit's archives carry their handler)")
    config = _model_config(path, archive, names, str(model.get("configFile") or ""))
    return ArchiveInfo(path, model["modelName"], model["modelVersion"], config, model["handler"])


def handler_module_file(handler: str) -> str:
    """The file a manifest's handler is in: 'tabular.py', 'tabular.py:handle' or 'tabular' -> tabular.py."""
    module = handler.split(":", 1)[0]
    return module if module.endswith(".py") else f"{module}.py"


def _model_config(path: Path, archive: zipfile.ZipFile, names: set[str], config_name: str) -> dict[str, Any]:
    if not config_name:
        return {}
    if config_name not in names:
        raise ArchiveError(f"{path}: {MANIFEST} names the model-config {config_name}, which is not in the "
                           f"archive; fix: {REBUILD}")
    try:
        config = yaml.safe_load(archive.read(config_name))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ArchiveError(f"{path}: its model-config {config_name} is not valid YAML ({error}); "
                           f"fix: {REBUILD}") from None
    if config is not None and not isinstance(config, dict):
        raise ArchiveError(f"{path}: its model-config {config_name} is not a mapping; fix: {REBUILD}")
    return dict(config or {})


def startup_archives(store: Path, load_models: str = "all") -> list[Path]:
    """The .mar files TorchServe registers at start: with load_models=all every file at the top of
    the store (hidden ones skipped, as TorchServe does), else those named in the list."""
    if load_models.strip().lower() == "all":
        if not store.is_dir():
            return []
        return sorted(path for path in store.iterdir()
                      if path.suffix == ".mar" and not path.name.startswith(".") and path.is_file())
    urls = [entry.split("=", 1)[-1].strip() for entry in load_models.split(",")]
    return [store / Path(url).name for url in urls if url.endswith(".mar")]


def check_startup(store: Path, archives: Iterable[Path]) -> list[ArchiveInfo]:
    """Every archive checked, and no model held by two of them; one ArchiveError naming every fault."""
    infos, faults = [], []
    for path in archives:
        try:
            infos.append(check_archive(path))
        except ArchiveError as error:
            faults.append(str(error))
    by_name: dict[str, list[ArchiveInfo]] = {}
    for info in infos:
        by_name.setdefault(info.name, []).append(info)
    for name, held in sorted(by_name.items()):
        if len(held) > 1:
            files = ", ".join(f"{info.path.name} ({info.version})" for info in held)
            faults.append(f"{store}: {files} all hold model {name!r}; TorchServe registers them in directory "
                          "order and the first becomes the default, whichever version it is; fix: "
                          + ONE_DEFAULT.format(store=store, name=name))
    if faults:
        raise ArchiveError("\n".join(faults))
    return infos


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check model archives as `make serve` does before a start.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check", help="exit 2 naming each archive TorchServe could not load").add_argument(
        "archives", nargs="+", type=Path)
    args = parser.parse_args(argv)
    code = 0
    for path in args.archives:
        try:
            info = check_archive(path)
            print(f"{path}: {info.name} {info.version}, handler {info.handler}: ok")
        except ArchiveError as error:
            print(f"error: {error}", file=sys.stderr)
            code = 2
    return code


if __name__ == "__main__":
    raise SystemExit(main())
