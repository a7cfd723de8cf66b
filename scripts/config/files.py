"""Config files: the one error a bad one raises, and TorchServe's properties format."""

from __future__ import annotations

from pathlib import Path


class ConfigError(ValueError):
    """A bad model config: `path: key 'k': what is wrong; fix: what to write`."""

    def __init__(self, path: Path, key: str, problem: str, fix: str) -> None:
        super().__init__(f"{path}: key '{key}': {problem}; fix: {fix}")
        self.path, self.key = path, key


def read_properties(path: Path) -> dict[str, str]:
    """key=value lines of a TorchServe properties file (comments and blanks skipped)."""
    properties: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, value = line.split("=", 1)
            properties[key.strip()] = value.strip()
    return properties
