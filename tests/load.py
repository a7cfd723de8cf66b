"""Real load (locust, in the background) for the e2e tests that must lose nothing under traffic.

    with BackgroundLoad.start(url, "tabular", tmp_path, seconds=30, token=key) as load:
        ...                                  # rollout, drain, recycle, SIGKILL
    replies = load.replies()                 # one Reply per answered (or failed) request

locust records every response (locustfile.py's BENCH_RESPONSES): when it was sent
and answered, its status (0: the connection failed), and the version that answered.
When the time is up, requests still in flight finish and are recorded (--stop-timeout),
so no request goes unrecorded.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from scripts.measure.loadgen import LoadResult, run_load, workload


@dataclass(frozen=True)
class Reply:
    sent: float
    answered: float
    status: int
    version: str


def read_replies(path: Path) -> list[Reply]:
    return [Reply(float(sent), float(answered), int(status), version)
            for sent, answered, status, version in (line.split() for line in path.read_text().splitlines())]


@dataclass
class BackgroundLoad:
    """locust against /predictions/MODEL for a fixed time, in a thread; `result()` waits for it."""

    pool: ThreadPoolExecutor
    future: Future[LoadResult]
    replies_file: Path

    @classmethod
    def start(cls, inference_url: str, model: str, workdir: Path, seconds: float, users: int = 6,
              token: str | None = None) -> BackgroundLoad:
        """Start the load and return once the first reply is recorded (load is flowing)."""
        workdir.mkdir(parents=True, exist_ok=True)
        bodies = workload(model).write(workdir / f"{model}-bodies.json")
        replies = workdir / f"{model}-replies.txt"
        env = {"BENCH_RESPONSES": str(replies), **({"BENCH_TOKEN": token} if token else {})}
        pool = ThreadPoolExecutor(1)
        future = pool.submit(run_load, inference_url, f"/predictions/{model}", bodies, users, seconds,
                             workdir, settle=0.0, extra_env=env, stop_timeout=30)
        deadline = time.monotonic() + 60
        while not (replies.exists() and replies.stat().st_size > 0):
            if time.monotonic() > deadline or future.done():
                future.result()  # raises locust's own error, if it had one
                raise AssertionError("locust sent nothing within 60 s")
            time.sleep(0.2)
        return cls(pool, future, replies)

    def result(self) -> LoadResult:
        try:
            return self.future.result()
        finally:
            self.pool.shutdown()

    def replies(self) -> list[Reply]:
        return read_replies(self.replies_file)

    def __enter__(self) -> BackgroundLoad:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.future.result() if exc_info[0] is None else None
        self.pool.shutdown(wait=True)
