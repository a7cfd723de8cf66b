"""The model store: its layout beyond what TorchServe reads, and what a .mar says about itself.

model_store/NAME.mar is what TorchServe loads at start (load_models=all) and what
a registration names (TorchServe takes only a url's file name, in the store).
model_store/.versions/NAME-VERSION.mar keeps each version `make archive` built;
the directory is hidden, so TorchServe never loads it by itself.

An archive is a zip: `read_archive` gives its name, version and model-config.
"""

from __future__ import annotations

import json
import shutil
import zipfile
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
