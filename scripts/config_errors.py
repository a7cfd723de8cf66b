"""The one error a bad config raises: file, key, what is wrong and the fix, in one line."""

from __future__ import annotations

from pathlib import Path


class ConfigError(ValueError):
    """A bad model config: `path: key 'k': what is wrong; fix: what to write`."""

    def __init__(self, path: Path, key: str, problem: str, fix: str) -> None:
        super().__init__(f"{path}: key '{key}': {problem}; fix: {fix}")
        self.path, self.key = path, key
