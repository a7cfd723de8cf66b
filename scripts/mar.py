"""Read what a .mar archive says about itself: name, version and model-config (it is a zip)."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


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
