"""tsctl as an operator or a Kubernetes Job runs it: `python -m scripts.operate.tsctl`, in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path


def run_tsctl(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None,
              timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The CLI with exactly `args`; its exit code, stdout and stderr, whatever they are."""
    return subprocess.run([sys.executable, "-m", "scripts.operate.tsctl", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def tsctl(server_dir: Path, *args: str, log: Path | None = None, cwd: Path | None = None,
          env: Mapping[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """tsctl for the TorchServe that runs in `server_dir` (its config.properties and key file there);
    `log`: the rollout log (one JSON line per step)."""
    where = ["--ts-config", str(server_dir / "config.properties"), "--server-dir", str(server_dir)]
    return run_tsctl(*where, *(["--log", str(log)] if log else []), *args, cwd=cwd, env=env, timeout=timeout)
