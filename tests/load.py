"""Real load (locust, in the background) for the e2e tests that must lose nothing under traffic.

    with BackgroundLoad.start(server, "tabular", tmp_path, seconds=60) as load:
        ...                                  # rollout, drain, recycle, SIGKILL
        load.wait_for(lambda replies: ..., "what the test waits to see")
        result = load.stop()                 # ends the load now, as at its time limit
    replies = load.replies()                 # one Reply per answered (or failed) request

locust records every response (locustfile.py's BENCH_RESPONSES): when it was sent
and answered, its status (0: the connection failed), and the version that answered.
`seconds` is the most it runs: a test stops it once the record shows what it needs,
rather than after a fixed window. When it stops, requests still in flight finish and
are recorded (--stop-timeout), so no request goes unrecorded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from scripts.client.rest import KeyFile
from scripts.measure.loadgen import LoadResult, Reply, read_replies, run_load, workload
from scripts.serve.local import LocalServer


@dataclass
class BackgroundLoad:
    """locust against /predictions/MODEL for at most a set time, in a thread; `stop()` ends it sooner."""

    pool: ThreadPoolExecutor
    future: Future[LoadResult]
    replies_file: Path
    stopping: threading.Event

    @classmethod
    def start(cls, server: LocalServer, model: str, workdir: Path, seconds: float,
              users: int = 6) -> BackgroundLoad:
        """Start the load on `server` (with its inference key when token authorization is on) and
        return once the first reply is recorded (load is flowing)."""
        workdir.mkdir(parents=True, exist_ok=True)
        bodies = workload(model).write(workdir / f"{model}-bodies.json")
        replies = workdir / f"{model}-replies.txt"
        token = KeyFile.read(server.key_file).inference
        env = {"BENCH_RESPONSES": str(replies), **({"BENCH_TOKEN": token} if token else {})}
        pool, stopping = ThreadPoolExecutor(1), threading.Event()
        future = pool.submit(run_load, server.inference_url, f"/predictions/{model}", bodies, users, seconds,
                             workdir, settle=0.0, extra_env=env, stop_timeout=30, stop=stopping)
        load = cls(pool, future, replies, stopping)
        try:
            load.wait_for(bool, "a first reply", timeout=60)
        except BaseException:
            load.end()
            raise
        return load

    def wait_for(self, enough: Callable[[list[Reply]], object], what: str,
                 timeout: float = 60) -> list[Reply]:
        """Poll the record until `enough(replies)` holds; fail if the load ends or `timeout` passes first."""
        deadline = time.monotonic() + timeout
        while not enough(replies := self.replies()):
            if self.future.done():
                self.future.result()  # raises locust's own error, if it had one
                raise AssertionError(f"the load ended before {what}: lengthen it")
            assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s ({len(replies)} replies)"
            time.sleep(0.1)
        return replies

    def stop(self) -> LoadResult:
        """End the load now (requests in flight still finish and are recorded); its result."""
        self.stopping.set()
        return self.result()

    def result(self) -> LoadResult:
        try:
            return self.future.result()
        finally:
            self.pool.shutdown()

    def replies(self) -> list[Reply]:
        return read_replies(self.replies_file)

    def __enter__(self) -> BackgroundLoad:
        return self

    def end(self) -> None:
        """Stop without asking for the result: for a test that failed, which waits for no time limit."""
        self.stopping.set()
        self.pool.shutdown(wait=True)

    def __exit__(self, *exc_info: object) -> None:
        if exc_info[0] is None:
            self.result()
        else:
            self.end()
