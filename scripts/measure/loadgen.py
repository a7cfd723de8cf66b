"""Drive HTTP load with locust (headless, FastHttpUser) and read back its figures.

Shared by `make bench` and `make tune`: the same request bodies, the same load
shape (closed loop: `users` clients, each sending its next request as soon as
the previous one is answered), and the locust process's own CPU time, since on a
2-core machine the load generator competes with the server it measures.
"""

from __future__ import annotations

import base64
import csv
import json
import logging
import math
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scripts.build import datasets
from scripts.build.models import digit_png
from scripts.client.prometheus import histogram_mean, increase, scrape, settled_scrape

logger = logging.getLogger(__name__)
LOCUSTFILE = Path(__file__).with_name("locustfile.py")
WORDS = ("model serving batches requests quickly while the queue waits for a worker to finish "
         "its forward pass on the cpu and every client expects an answer within its latency budget "
         "tokens sentences embeddings cosine similarity vector search ranking retrieval").split()


@dataclass(frozen=True)
class Workload:
    """The request bodies every variant is sent, with their content type."""

    content_type: str
    bodies: list[bytes]

    def write(self, path: Path) -> Path:
        document = {"content_type": self.content_type,
                    "bodies": [base64.b64encode(body).decode() for body in self.bodies]}
        path.write_text(json.dumps(document))
        return path


def workload(model: str) -> Workload:
    """Held-out rows and images for tabular and digits; sentences of 5 to 60 words for minilm."""
    if model == "tabular":
        rows = datasets.breast_cancer().held_out_x
        return Workload("application/json",
                        [json.dumps({"features": row.tolist()}).encode() for row in rows])
    if model == "digits":
        return Workload("image/png", [digit_png(image) for image in datasets.digits().held_out_x])
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 61)))) for _ in range(200)]
    return Workload("application/json", [json.dumps({"text": text}).encode() for text in texts])


@dataclass(frozen=True)
class LoadResult:
    """One locust run against one endpoint at one concurrency."""

    requests: int
    failures: int
    throughput: float  # requests per second
    p50_ms: float
    p95_ms: float
    p99_ms: float
    locust_cpu: float  # share of the whole machine's CPU the load generator used (0..1)
    mean_batch: float | None  # requests per forward pass, from our BatchRequests metric
    mean_ms: float = math.nan  # mean latency, as locust reports it
    wall_s: float = math.nan  # how long locust ran, start to exit


@dataclass(frozen=True)
class Reply:
    """One response as locustfile.py records it (BENCH_RESPONSES): Unix times, status, X-Model-Version."""

    sent: float
    answered: float
    status: int
    version: str = "-"  # the frontend's own answers (503 queue full, 507 worker died) carry none


def read_replies(path: Path) -> list[Reply]:
    """Every reply recorded so far; a last line locust is still writing waits for the next read."""
    if not path.exists():
        return []
    complete = path.read_text().split("\n")[:-1]
    return [Reply(float(sent), float(answered), int(status), version)
            for sent, answered, status, version in (line.split() for line in complete)]


def run_load(host: str, path: str, bodies_file: Path, users: int, seconds: float, workdir: Path,
             metrics_url: str | None = None, model_label: str | None = None,
             settle: float = 1.0, extra_env: dict[str, str] | None = None,
             stop_timeout: float = 0.0, stop: threading.Event | None = None) -> LoadResult:
    """Run locust for `seconds` (whole seconds, rounded up, at least 2) with `users` concurrent clients;
    figures from its CSV summary. `extra_env`: BENCH_TOKEN, BENCH_RESPONSES (locustfile.py).
    `stop_timeout`: at the end, let requests in flight finish (and be recorded) for up to this long;
    0 (locust's default) abandons them. `stop`: when set, the run ends early, as at its time limit
    (SIGTERM: locust stops its users, lets `stop_timeout` run, and writes its summary)."""
    prefix = workdir / f"locust-{path.strip('/').replace('/', '_')}-{users}-{time.monotonic_ns()}"
    before = scrape(metrics_url) if metrics_url else []
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    run_time = f"{max(2, math.ceil(seconds))}s"  # locust's summary of a 1 s run is empty
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
               "--users", str(users), "--spawn-rate", str(users), "--run-time", run_time,
               "--host", host, "--csv", str(prefix), "--loglevel", "ERROR", "--exit-code-on-error", "0"]
    if stop_timeout:
        command += ["--stop-timeout", f"{stop_timeout:g}"]
    env = {**os.environ, "BENCH_BODIES": str(bodies_file), "BENCH_PATH": path, **(extra_env or {})}
    result = _locust(command, env, seconds + 120, stop)
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"locust failed ({result.returncode}):\n{result.stderr[-2000:]}")
    after_usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after_usage.ru_utime - usage.ru_utime) + (after_usage.ru_stime - usage.ru_stime)
    row = _aggregated_row(Path(f"{prefix}_stats.csv"))
    mean_batch = None
    if metrics_url and model_label:  # once every request locust saw answered is in a batch's metrics
        answered = int(row["Request Count"]) - int(row["Failure Count"])
        after = settled_scrape(metrics_url, lambda samples: increase(
            before, samples, "BatchRequests_sum", ModelName=model_label) >= answered, timeout=5)
        mean_batch = histogram_mean(before, after, "BatchRequests", ModelName=model_label)
    time.sleep(settle)  # let requests still queued when locust stopped drain before the next run
    return LoadResult(
        requests=int(row["Request Count"]), failures=int(row["Failure Count"]),
        throughput=float(row["Requests/s"]), p50_ms=_ms(row["50%"]), p95_ms=_ms(row["95%"]),
        p99_ms=_ms(row["99%"]), locust_cpu=cpu / (wall * (os.cpu_count() or 1)), mean_batch=mean_batch,
        mean_ms=float(row["Average Response Time"]), wall_s=wall,
    )


def _locust(command: list[str], env: dict[str, str], timeout: float,
            stop: threading.Event | None) -> subprocess.CompletedProcess[str]:
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as process:
        if stop is not None:
            threading.Thread(target=_end_when, args=(stop, process), daemon=True).start()
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _end_when(stop: threading.Event, process: subprocess.Popen[str]) -> None:
    while process.poll() is None:
        if stop.wait(0.1):
            process.send_signal(signal.SIGTERM)
            return


def _ms(value: str) -> float:
    """A locust percentile; N/A (no request completed) is infinitely slow."""
    return math.inf if value == "N/A" else float(value)


def _aggregated_row(stats_csv: Path) -> dict[str, str]:
    with stats_csv.open() as handle:
        for row in csv.DictReader(handle):
            if row["Name"] == "Aggregated":
                return row
    raise RuntimeError(f"no Aggregated row in {stats_csv}")
