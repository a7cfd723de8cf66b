"""Tell a model that is still loading from one that cannot load, while `make serve` waits.

TorchServe keeps restarting the workers of a model whose `initialize()` fails (a
damaged archive, a handler that raises), within the model's maxRetryTimeoutInSec
(300 s by default); `/ping` stays "Healthy" and its predictions wait in the queue
with no answer. Waiting for READY alone would sit out the whole start timeout, so
`LoadWatch` gives up on a model early, on either sign:

- a crash loop: one of its workers started `restarts` + 1 times (a new pid under
  the same worker id) without becoming READY;
- trailing: the other models are READY and this one is not, `grace` seconds after
  the last of them became READY.

`CannotLoad` names the model and carries the last lines its workers wrote to
logs/model_log.log, where the real reason is (a traceback).
"""

from __future__ import annotations

import re
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOG_LINES = 12
ERROR_LINE = re.compile(r"^\s*[\w.]*(Error|Exception|Exit)\b.*")
WORKER_STARTED = "Torch worker started."  # model_service_worker.py, once per worker process


class CannotLoad(RuntimeError):
    """A model whose workers will not become READY: `model`, `reason`, and `log` lines that say why."""

    def __init__(self, model: str, reason: str, log: list[str]) -> None:
        super().__init__(f"{model} cannot load: {reason}")
        self.model, self.reason, self.log = model, reason, log


@dataclass
class LoadWatch:
    """Fed every describe answer while waiting; raises CannotLoad once a model shows it cannot load."""

    grace: float = 30.0
    restarts: int = 2
    model_log: Path | None = None
    _pids: dict[str, dict[str, set[int]]] = field(default_factory=dict)
    _last_ready_at: float | None = None

    def observe(self, model: str, description: list[dict[str, Any]]) -> None:
        """Record the worker pids of a model not READY yet; a worker restarted too often is a crash loop."""
        workers = self._pids.setdefault(model, {})
        for version in description:
            for worker in version.get("workers", []):
                pid = worker.get("pid")
                if isinstance(pid, int) and pid > 0:
                    workers.setdefault(str(worker.get("id")), set()).add(pid)
        starts = max((len(pids) for pids in workers.values()), default=0)
        if starts > self.restarts:
            raise self.failure(model, f"its worker died {starts - 1} times while loading and TorchServe "
                                      "keeps restarting it (a crash loop)")

    def ready(self, now: float | None = None) -> None:
        """A model became READY: the others' grace counts from here."""
        self._last_ready_at = time.monotonic() if now is None else now

    def check_trailing(self, pending: set[str], now: float | None = None) -> None:
        """Raise for a pending model once the others have all been READY for `grace` seconds."""
        if not pending or self._last_ready_at is None:
            return
        waited = (time.monotonic() if now is None else now) - self._last_ready_at
        if waited > self.grace:
            model = sorted(pending)[0]
            raise self.failure(model, f"not READY {waited:.0f} s after the other models were "
                                      f"(--ready-grace {self.grace:.0f})")

    def failure(self, model: str, reason: str) -> CannotLoad:
        return CannotLoad(model, reason, worker_log(self.model_log, model) if self.model_log else [])


def worker_log(model_log: Path, model: str, lines: int = LOG_LINES) -> list[str]:
    """What the last worker of `model` wrote (TorchServe tags its lines W-PORT-MODEL_VERSION) up to the
    first error of its latest failed start: the handler's own traceback comes before TorchServe's."""
    if not model_log.is_file():
        return []
    tag = re.compile(rf"\bW-(\d+)-{re.escape(model)}_\S*")
    tagged: deque[tuple[str, str]] = deque(maxlen=5000)
    with model_log.open(errors="replace") as stream:
        for line in stream:
            found = tag.search(line)
            if found:
                tagged.append((found.group(1), line.rstrip("\n").split(" - ", 1)[-1]))
    if not tagged:
        return []
    worker = tagged[-1][0]  # one worker's lines: several workers' tracebacks interleave
    text = [line for port, line in tagged if port == worker and line.strip(" ^")]  # no blank or ^^^ lines
    starts = [index for index, line in enumerate(text) if line.startswith(WORKER_STARTED)] or [0]
    for begin in reversed(starts):  # the latest start that failed; the newest may still be loading
        errors = [index for index in range(begin, len(text)) if ERROR_LINE.match(text[index])]
        if errors:
            return text[max(begin, errors[0] + 1 - lines):errors[0] + 1]
    return text[-lines:]
