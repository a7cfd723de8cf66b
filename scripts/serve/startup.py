"""Tell a model that is still loading from one that cannot load, while `make serve` waits.

TorchServe keeps restarting the workers of a model whose `initialize()` fails (a
damaged archive, a handler that raises), within the model's maxRetryTimeoutInSec
(300 s by default); `/ping` stays "Healthy" and its predictions wait in the queue
with no answer. Waiting for READY alone would sit out the whole start timeout. But a
slow model is not a broken one (minilm's warm-up on a busy machine), so `LoadWatch`
names a model as unable to load only on evidence, never for trailing the others:

- its worker died while loading: since this start began, its log says "Backend
  worker process died." (TorchServe's worker prints it, after the handler's
  traceback, when `initialize()` raised). TorchServe would restart it, but an
  `initialize()` that raised on this archive raises again, so one death is enough;
- a crash loop: one of its workers started `restarts` + 1 times (a new pid under
  the same worker id) without becoming READY, e.g. killed by the OOM killer, which
  leaves no line in the log;
- its own startupTimeout (the archive's model-config, as TorchServe reads it) passed,
  plus `slack`, since TorchServe first described it: TorchServe itself stops a
  worker that loads longer than that (so a worker restarted once its budget has
  passed is named for the budget, not as a death).

Until then, every `every` seconds, `observe` returns a line saying it is warming,
with the last line its worker wrote. `CannotLoad` names the model and carries the
lines its workers wrote to logs/model_log.log, where the real reason is.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.build.store import ArchiveInfo

LOG_LINES = 12
ERROR_LINE = re.compile(r"^\s*[\w.]*(Error|Exception|Exit)\b.*")
WORKER_STARTED = "Torch worker started."  # model_service_worker.py, once per worker process
WORKER_DIED = "Backend worker process died."  # model_service_worker.py, as its process exits on an error
WORKER_TAG = re.compile(r"\bW-(\d+)-(\S+)")  # TorchServe's logger per worker: W-PORT-MODEL_VERSION-stdout
DEFAULT_STARTUP_TIMEOUT = 120.0  # TorchServe's own, for a model-config without startupTimeout
SHOWN_CHARS = 120  # of the last log line in a progress line
TRACEBACK_WAIT_S = 3.0  # after a worker's death line, for its traceback to reach the log
# The JVM starting and the archives' extraction, before any worker loads: measured ~5 s idle and 24 s
# until all three examples were READY. make serve and the pod's startup probe both wait this long on top
# of the archives' startupTimeout.
FRONTEND_START_S = 60


class CannotLoad(RuntimeError):
    """A model whose workers will not become READY: `model`, `reason`, and `log` lines that say why."""

    def __init__(self, model: str, reason: str, log: list[str], fix: str = "") -> None:
        super().__init__(f"{model} cannot load: {reason}")
        self.model, self.reason, self.log, self.fix = model, reason, log, fix


def startup_budgets(archives: Iterable[ArchiveInfo]) -> dict[str, float]:
    """Each model's startupTimeout in seconds, from its archive's model-config."""
    budgets: dict[str, float] = {}
    for info in archives:
        budget = float(info.model_config.get("startupTimeout", DEFAULT_STARTUP_TIMEOUT))
        budgets[info.name] = max(budget, budgets.get(info.name, 0.0))
    return budgets


def outer_timeout(timeout: float, budgets: Mapping[str, float]) -> float:
    """`timeout`, raised where needed so it never undercuts a model's own budget: the frontend's start
    plus the largest startupTimeout (the models load at the same time)."""
    return max(timeout, FRONTEND_START_S + max(budgets.values(), default=0.0))


class WorkerLog:
    """What workers write to logs/model_log.log from the moment this object is made, read as it comes
    (a log rolled meanwhile, a new file, is read from its start)."""

    def __init__(self, path: Path, from_start: bool = False) -> None:
        self.path = path
        self._inode, self._position = (0, 0) if from_start else self._file_id()
        self._partial = b""
        self._tagged: deque[tuple[str, str]] = deque(maxlen=20000)  # (tag, text after " - ")

    def _file_id(self) -> tuple[int, int]:
        try:
            status = self.path.stat()
        except OSError:
            return 0, 0
        return status.st_ino, status.st_size

    def _read(self) -> None:
        inode, size = self._file_id()
        if inode != self._inode or size < self._position:  # rolled over, or created since
            self._inode, self._position, self._partial = inode, 0, b""
        if size == self._position:
            return
        with self.path.open("rb") as stream:
            stream.seek(self._position)
            data = self._partial + stream.read(size - self._position)
        self._position = size
        *complete, self._partial = data.split(b"\n")
        for raw in complete:
            line = raw.decode(errors="replace")
            found = WORKER_TAG.search(line)
            if found:
                self._tagged.append((found.group(0), line.split(" - ", 1)[-1]))

    def lines(self, model: str) -> list[tuple[str, str]]:
        """(worker port, text) of every line the workers of `model` wrote, oldest first."""
        self._read()
        tag = re.compile(rf"^W-(\d+)-{re.escape(model)}_")
        return [(found.group(1), text) for found, text in ((tag.match(t), text) for t, text in self._tagged)
                if found]


def worker_log(model_log: Path, model: str, lines: int = LOG_LINES) -> list[str]:
    """What the last worker of `model` wrote to the whole of `model_log`, as `failed_start` picks it."""
    return failed_start(WorkerLog(model_log, from_start=True).lines(model), lines)


def failed_start(tagged: list[tuple[str, str]], lines: int = LOG_LINES) -> list[str]:
    """What the last worker wrote up to the first error of its latest failed start: the handler's own
    traceback comes before TorchServe's. Without a failed start, its last `lines` lines."""
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


@dataclass
class LoadWatch:
    """Fed every describe answer of a model not READY yet; raises CannotLoad on evidence that it will not
    load, and otherwise says every `every` seconds that it is warming. Make it before TorchServe starts:
    only what the workers log after that counts (`whole_log` for a TorchServe started before it)."""

    budgets: Mapping[str, float] = field(default_factory=dict)  # model -> startupTimeout, seconds
    model_log: Path | None = None
    whole_log: bool = False
    restarts: int = 2
    slack: float = 10.0
    every: float = 5.0
    clock: Callable[[], float] = time.monotonic
    _log: WorkerLog | None = field(init=False, default=None)
    _seen: dict[str, float] = field(init=False, default_factory=dict)  # first described at
    _shown: dict[str, float] = field(init=False, default_factory=dict)  # last progress line at
    _pids: dict[str, dict[str, set[int]]] = field(init=False, default_factory=dict)
    _died: dict[str, float] = field(init=False, default_factory=dict)  # its death line first seen at

    def __post_init__(self) -> None:
        self._log = WorkerLog(self.model_log, from_start=self.whole_log) if self.model_log else None

    def observe(self, model: str, description: list[dict[str, Any]]) -> str | None:
        """Raise CannotLoad on evidence; else a progress line when one is due, or None."""
        now = self.clock()
        since = self._seen.setdefault(model, now)
        waited, budget = now - since, self.budget(model)
        tagged = self._log.lines(model) if self._log else []
        restarts = self._restarts(model, description)
        died = any(text.startswith(WORKER_DIED) for _, text in tagged)
        if waited > budget + self.slack or (waited >= budget and (died or restarts)):
            # past its budget, TorchServe stops the worker itself: that death is the timeout's doing
            raise self._failure(model, f"not READY {waited:.0f} s after TorchServe registered it, past its "
                                       f"startupTimeout ({budget:.0f} s in its archive's model-config), "
                                       "after which TorchServe stops a loading worker", tagged,
                                fix=f"if it is only slow, raise startupTimeout in {model}'s model YAML "
                                    "(model_config) and rebuild with `make archive`")
        if died:
            # The death line comes through the worker's stdout, its traceback through stderr: TorchServe
            # reads them on two threads, so the traceback may land in the log just after. Wait for it briefly.
            died_at = self._died.setdefault(model, now)
            if any(ERROR_LINE.match(text) for _, text in tagged) or now - died_at >= TRACEBACK_WAIT_S:
                raise self._failure(model, "its worker died while loading (TorchServe restarts it, but an "
                                           "initialize() that raised fails again)", tagged)
        if restarts >= self.restarts:
            raise self._failure(model, f"its worker died {restarts} times while loading and TorchServe "
                                       "keeps restarting it (a crash loop)", tagged)
        if now - self._shown.get(model, since) < self.every:
            return None
        self._shown[model] = now
        up = any(pids for pids in self._pids[model].values())
        last = next((text for _, text in reversed(tagged) if text.strip()), None)
        shown = f'"{last[:SHOWN_CHARS]}"' if last else "none yet"
        return (f"{model}: warming ({waited:.0f} s of its startupTimeout {budget:.0f} s, "
                f"{'worker up' if up else 'no worker yet'}; last log line: {shown})")

    def budget(self, model: str) -> float:
        return float(self.budgets.get(model, DEFAULT_STARTUP_TIMEOUT))

    def _restarts(self, model: str, description: list[dict[str, Any]]) -> int:
        """Record the worker pids; how often the most restarted worker was started again (a new pid)."""
        workers = self._pids.setdefault(model, {})
        for version in description:
            for worker in version.get("workers", []):
                pid = worker.get("pid")
                if isinstance(pid, int) and pid > 0:
                    workers.setdefault(str(worker.get("id")), set()).add(pid)
        return max((len(pids) - 1 for pids in workers.values()), default=0)

    @staticmethod
    def _failure(model: str, reason: str, tagged: list[tuple[str, str]], fix: str = "") -> CannotLoad:
        return CannotLoad(model, reason, failed_start(tagged), fix)
