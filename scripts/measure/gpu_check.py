"""`make gpu-check`: every model on a CUDA GPU against the CPU, in-process, then served by TorchServe.

    python -m scripts.measure.gpu_check [--models tabular digits minilm] [--batches 16 64 256]
        [--rounds 8] [--clients 64] [--seconds 20] [--no-served] [--out docs/performance]
    python -m scripts.measure.gpu_check --cpu-only ...   the same steps with the CPU standing in for
                                                         the GPU (no CUDA needed; `make test` runs it)

Each model runs with its YAML's gpu: profile (scripts/config/model.py).

In-process (scripts/harness.py: a real Context, given gpu_id 0 as TorchServe gives it):
  agreement   the same held-out requests answered on the GPU and on the CPU: the largest
              difference of any number in the answers, the share of equal labels, and the
              least cosine between two answers' numbers (embeddings)
  speed       per batch size: requests/s, handle() per batch, the engine's share of it
              (timed with a CUDA synchronize on both sides), and the first batch of that
              size against the median (what warm-up leaves to the first request)
Served (a private TorchServe with number_of_gpu, the GPU-profile archives, locust as in `make bench`):
  workers     describe's gpu field and the engine each worker reports (HandlerEngine)
  speed       requests/s, p50, p99 and mean batch at --clients closed-loop clients, and
              served / in-process at the profile's batchSize
  minilm      also with --workers-per-gpu workers per GPU (default 2), and under TorchServe's log4j2.xml
              (per-request DEBUG lines) instead of configs/log4j2.xml
  GPU metrics TorchServe's GPUUtilization / GPUMemoryUsed (they need the nvgpu package)

Writes OUT/gpu-inprocess.json and OUT/gpu-served.json. Without CUDA (and without --cpu-only)
it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from scripts.build import archive
from scripts.client.prometheus import scrape
from scripts.config.model import CONFIG_DIR, load_spec
from scripts.harness import LocalModel, RawRequest, Result
from scripts.measure.breakdown import (
    CpuMeter,
    latency_rows,
    profile_shares,
    server_processes,
    start_profiler,
)
from scripts.measure.loadgen import run_load, workload
from scripts.operate.engine_status import engines_by_worker
from scripts.serve.local import LocalServer, project_frontend

logger = logging.getLogger(__name__)
MODELS = ("tabular", "digits", "minilm")


class TimedEngine:
    """The handler's engine, timed call by call; on a GPU each call waits for the device on both sides."""

    def __init__(self, engine: Callable[..., torch.Tensor], device: torch.device) -> None:
        self.engine, self.device, self.seconds = engine, device, 0.0

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        self._sync()
        started = time.perf_counter()
        output = self.engine(*inputs)
        self._sync()
        self.seconds += time.perf_counter() - started
        return output

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def requests_of(model: str, count: int) -> list[RawRequest]:
    """`count` single-instance requests from the held-out workload `make bench` sends."""
    load = workload(model)
    return [RawRequest(load.bodies[i % len(load.bodies)], load.content_type) for i in range(count)]


@contextmanager
def local_model(model: str, gpu: int | None, warmup: bool = True) -> Iterator[LocalModel]:
    """The model's GPU profile in-process: on GPU `gpu`, or on the CPU with gpu None."""
    options = None if warmup else {"warmup": False}
    with LocalModel.from_config(CONFIG_DIR / f"{model}.yaml", options, gpu=gpu, device="gpu") as loaded:
        yield loaded


def time_batches(loaded: LocalModel, model: str, batches: Sequence[int],
                 rounds: int) -> list[dict[str, Any]]:
    """Per batch size: the first batch (what warm-up left), then the median of `rounds` batches."""
    handler = loaded.handler
    timer = TimedEngine(handler.engine, handler.placement.accelerator)
    handler.engine = timer
    figures = []
    profile_batch = int(loaded.context.system_properties.get("batch_size") or 1)
    for size in sorted({*batches, profile_batch}):  # served / in-process compares at the profile's size
        batch = requests_of(model, size)
        first = _timed(loaded, batch, timer)
        runs = [_timed(loaded, batch, timer) for _ in range(rounds)]
        whole = statistics.median(run[0] for run in runs)
        engine = statistics.median(run[1] for run in runs)
        figures.append({"batch": size, "requests_per_s": round(size / whole, 1),
                        "batch_ms": round(whole * 1e3, 2), "engine_ms": round(engine * 1e3, 2),
                        "engine_share": round(engine / whole, 3),
                        "outside_engine_us_per_request": round((whole - engine) / size * 1e6, 1),
                        "first_batch_ms": round(first[0] * 1e3, 2),
                        "first_over_median": round(first[0] / whole, 2)})
        logger.info("    %-7s batch %4d: %8.1f req/s, %7.2f ms per batch, engine %5.1f%%, first batch %.2fx",
                    model, size, size / whole, whole * 1e3, 100 * engine / whole, first[0] / whole)
    return figures


def _timed(loaded: LocalModel, batch: list[RawRequest], timer: TimedEngine) -> tuple[float, float]:
    timer.seconds = 0.0
    started = time.perf_counter()
    results = loaded.run(batch)
    seconds = time.perf_counter() - started
    bad = [result.status for result in results if result.status != 200]
    if bad:
        raise RuntimeError(f"{len(bad)} of {len(batch)} requests failed in-process: {bad[:5]} "
                           f"({results[0].body[:300]!r})")
    return seconds, timer.seconds


def agreement(on_gpu: Sequence[Result], on_cpu: Sequence[Result]) -> dict[str, Any]:
    """How far the GPU's answers are from the CPU's: numbers, labels and (for vectors) cosine."""
    worst, cosines, labels_equal, labels = 0.0, [], 0, 0
    for gpu_result, cpu_result in zip(on_gpu, on_cpu, strict=True):
        gpu_numbers, gpu_labels = leaves(gpu_result.json())
        cpu_numbers, cpu_labels = leaves(cpu_result.json())
        if len(gpu_numbers) != len(cpu_numbers) or len(gpu_labels) != len(cpu_labels):
            raise RuntimeError("the GPU and the CPU answered with different shapes")
        worst = max([worst, *(abs(a - b) for a, b in zip(gpu_numbers, cpu_numbers, strict=True))])
        labels += len(gpu_labels)
        labels_equal += sum(a == b for a, b in zip(gpu_labels, cpu_labels, strict=True))
        if len(gpu_numbers) >= 8:
            cosines.append(cosine(gpu_numbers, cpu_numbers))
    return {"requests": len(on_gpu), "max_abs_diff": worst,
            "labels_equal": labels_equal / labels if labels else None,
            "min_cosine": min(cosines) if cosines else None}


def leaves(document: Any) -> tuple[list[float], list[str]]:
    """Every number and every string of a JSON document, in order."""
    numbers: list[float] = []
    strings: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, bool) or isinstance(value, str):
            strings.append(str(value))
        elif isinstance(value, (int, float)):
            numbers.append(float(value))

    walk(document)
    return numbers, strings


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 1.0


def in_process(models: Sequence[str], batches: Sequence[int], rounds: int,
               gpu: int | None) -> dict[str, Any]:
    """Agreement and speed per model; `gpu` None compares the CPU with itself (the --cpu-only path)."""
    found: dict[str, Any] = {}
    for model in models:
        logger.info("==> %s in-process: %s against the CPU", model,
                    "the CPU" if gpu is None else f"cuda:{gpu}")
        checked = requests_of(model, 64)
        with local_model(model, gpu) as on_device:
            engine = on_device.handler.placement.label
            device_answers = on_device.run(checked)
            device_speed = time_batches(on_device, model, batches, rounds)
        with local_model(model, None, warmup=False) as on_cpu:  # the reference: its first batch is not read
            cpu_answers = on_cpu.run(checked)
            cpu_speed = time_batches(on_cpu, model, batches, max(2, rounds // 3))
        found[model] = {"engine": engine, "agreement": agreement(device_answers, cpu_answers),
                        "device": device_speed, "cpu": cpu_speed}
        logger.info("    agreement: %s", found[model]["agreement"])
    return found


def served(models: Sequence[str], inprocess: dict[str, Any], clients: int, seconds: float,
           gpus: int, workdir: Path, workers_per_gpu: Sequence[int] = (2,),
           defaults: bool = True) -> dict[str, Any]:
    """Each model served by TorchServe from its GPU-profile archive, under `clients` closed-loop clients."""
    store = workdir / "store"
    configs = [str(CONFIG_DIR / f"{model}.yaml") for model in models]
    if archive.main([*configs, "--store", str(store), "--device", "gpu"]) != 0:
        raise RuntimeError("the GPU-profile archives did not build (the log above says why)")
    project = {"number_of_gpu": str(gpus), **project_frontend()}  # what configs/*.properties ship
    found: dict[str, Any] = {"runs": []}
    logger.info("==> served: %s, %d clients, %.0f s each (number_of_gpu=%d)", ", ".join(models), clients,
                seconds, gpus)
    with LocalServer.start(workdir / "project", store, list(models), timeout=600, extra=project) as server:
        found["workers"] = workers(server, models)
        for model in models:
            found["runs"].append(load(server, model, "project frontend, 1 worker", clients, seconds,
                                      workdir, inprocess, breakdown=model == "minilm"))
        for count in (sorted(workers_per_gpu) if "minilm" in models else []):
            with server.client() as client:
                client.scale("minilm", min_workers=count * max(1, gpus), synchronous=True, timeout=300)
            found["runs"].append(load(server, "minilm", f"project frontend, {count} workers per GPU",
                                      clients, seconds, workdir, inprocess))
        found["gpu_metrics"] = gpu_metrics(server)
    found["nvgpu_missing_lines"] = log_count(workdir / "project" / "logs", "No module named 'nvgpu'")
    found["gpu_utilization_lines"] = log_count(workdir / "project" / "logs", "GPUUtilization")
    if "minilm" in models and defaults:  # TorchServe's own frontend settings, for the frontend's share
        defaults = {"number_of_gpu": str(gpus), "vmargs": ""}
        with LocalServer.start(workdir / "defaults", store, ["minilm"], timeout=600,
                               extra=defaults) as server:
            found["runs"].append(load(server, "minilm", "TorchServe's own log4j2.xml, 1 worker", clients,
                                      seconds, workdir, inprocess))
    return found


def workers(server: LocalServer, models: Sequence[str]) -> dict[str, Any]:
    """Each model's workers as describe shows them, with the engine each one reported."""
    engines = engines_by_worker(server.metrics_url)
    shown = {}
    with server.client() as client:
        for model in models:
            (entry,) = client.describe(model)
            version = entry.get("modelVersion")
            shown[model] = [{"id": worker.get("id"), "status": worker.get("status"), "gpu": worker.get("gpu"),
                             "engine": engines.get((model, version, worker.get("pid")), "?")}
                            for worker in entry.get("workers", [])]
            logger.info("    %s workers: %s", model, shown[model])
    return shown


def load(server: LocalServer, model: str, variant: str, clients: int, seconds: float, workdir: Path,
         inprocess: dict[str, Any], breakdown: bool = False) -> dict[str, Any]:
    """One locust run; with `breakdown`, also where a request's time went (make breakdown's three views:
    TorchServe's latency split, CPU seconds per process, a py-spy profile of the worker)."""
    bodies = workload(model).write(workdir / f"{model}-bodies.json")
    # Warm the frontend (a JVM compiles its hot paths as they run) and the workers before measuring: on
    # the H200, minilm measured first took 1.28 ms of Java CPU per request, measured after others 0.28 ms.
    run_load(server.inference_url, f"/predictions/{model}", bodies, clients, min(5.0, seconds), workdir)
    if breakdown:
        with server.client() as client:
            (entry,) = client.describe(model)
        worker = int(entry["workers"][0]["pid"])
        meter = CpuMeter(server_processes(server, worker))
        spy = start_profiler(worker, seconds, workdir / f"{model}-profile.txt")
        before = scrape(server.metrics_url)
        meter.start()
    result = run_load(server.inference_url, f"/predictions/{model}", bodies, clients, seconds, workdir,
                      metrics_url=server.metrics_url, model_label=model)
    batch = int(load_spec(CONFIG_DIR / f"{model}.yaml", device="gpu").model_config.get("batchSize", 1))
    alone = next((row["requests_per_s"] for row in inprocess.get(model, {}).get("device", [])
                  if row["batch"] == batch), None)
    row = {"model": model, "variant": variant, "clients": clients,
           "requests_per_s": round(result.throughput, 1), "p50_ms": result.p50_ms, "p99_ms": result.p99_ms,
           "failures": result.failures,
           "mean_batch": None if result.mean_batch is None else round(result.mean_batch, 1),
           "locust_cpu_share": round(result.locust_cpu, 3), "batch_size": batch,
           "in_process_requests_per_s": alone,
           "served_over_in_process": round(result.throughput / alone, 3) if alone else None}
    logger.info("    %-7s %-55s %8.1f req/s  p50 %6.1f ms  p99 %7.1f ms  batch %s  served/in-process %s",
                model, variant, result.throughput, result.p50_ms, result.p99_ms, row["mean_batch"],
                row["served_over_in_process"])
    if breakdown:
        cpu = meter.stop()
        row["cpu_ms_per_request"] = {label: round(1e3 * used / max(1, result.requests), 3)
                                     for label, used in cpu.items()}
        row["latency_ms"] = [[label, round(ms, 3), None if share is None else round(share, 3)]
                             for label, ms, share in latency_rows(before, scrape(server.metrics_url), model,
                                                                  result)]
        if spy is not None:
            spy.wait(timeout=seconds + 60)
        profile = workdir / f"{model}-profile.txt"
        row["profile_shares"] = profile_shares(profile.read_text()) if profile.exists() else {}
        for label, ms, share in row["latency_ms"]:
            logger.info("      %-75s %8.2f ms %s", label, ms, "" if share is None else f"{100 * share:5.1f}%")
        logger.info("      CPU ms per request: %s; worker profile: %s", row["cpu_ms_per_request"],
                    {k: round(v, 3) for k, v in row["profile_shares"].items()})
    return row


def gpu_metrics(server: LocalServer) -> dict[str, float]:
    """TorchServe's own GPU system metrics, if its collector could import nvgpu."""
    try:
        samples = scrape(server.metrics_url)
    except Exception:  # noqa: BLE001 - reported as absent
        return {}
    return {f"{s.name}{sorted(s.labels.items())}": s.value for s in samples if s.name.startswith("GPU")}


def log_count(log_dir: Path, text: str) -> int:
    return sum(path.read_text(errors="replace").count(text) for path in log_dir.glob("*.log"))


def environment(gpu: int | None) -> dict[str, Any]:
    facts = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
             "python": platform.python_version(), "host_cores": len(os.sched_getaffinity(0))}
    if gpu is not None:
        facts["gpu"] = torch.cuda.get_device_name(gpu)
    return facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--batches", nargs="+", type=int, default=[16, 64, 256])
    parser.add_argument("--rounds", type=int, default=8, help="timed batches per size (median)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0, help="load per served run")
    parser.add_argument("--no-served", action="store_true", help="in-process only (no Java needed)")
    parser.add_argument("--workers-per-gpu", type=int, nargs="*", default=[2],
                        help="minilm served again with these workers per GPU (default 2)")
    parser.add_argument("--no-defaults", action="store_true",
                        help="skip minilm under TorchServe's own log4j2.xml")
    parser.add_argument("--inprocess", type=Path,
                        help="serve only, with the in-process figures of an earlier run's gpu-inprocess.json")
    parser.add_argument("--cpu-only", action="store_true", help="no GPU: the CPU stands in for it")
    parser.add_argument("--out", type=Path,
                        help="default: docs/performance (results/gpu-check with --cpu-only)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    noisy = [logging.getLogger(name)
             for name in ("handlers", "ts", "scripts.build", "scripts.harness", "urllib3")]
    levels = [logger.level for logger in noisy]
    for quiet in noisy:
        quiet.setLevel(logging.WARNING)
    try:
        return check(args)
    finally:  # called in-process (the tests), it must not leave these loggers quiet
        for quiet, level in zip(noisy, levels, strict=True):
            quiet.setLevel(level)


def check(args: argparse.Namespace) -> int:
    """The whole check for parsed arguments; 0 unless a step fails."""
    if not torch.cuda.is_available() and not args.cpu_only:
        logger.info("gpu-check: no CUDA device here (torch %s, torch.cuda.is_available() is False): nothing "
                    "to check. Run it on a machine with an NVIDIA GPU and a CUDA build of torch.",
                    torch.__version__)
        return 0
    gpu = None if args.cpu_only else 0
    out = args.out or (Path("results/gpu-check") if args.cpu_only else Path("docs/performance"))
    out.mkdir(parents=True, exist_ok=True)
    facts = environment(gpu)
    if args.inprocess:
        inprocess = json.loads(args.inprocess.read_text())
    else:
        inprocess = {"environment": facts, "models": in_process(args.models, args.batches, args.rounds, gpu)}
    (out / "gpu-inprocess.json").write_text(json.dumps(inprocess, indent=2) + "\n")
    logger.info("==> wrote %s", out / "gpu-inprocess.json")
    if args.no_served:
        return 0
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as workdir:
        result = served(args.models, inprocess["models"], args.clients, args.seconds,
                        0 if gpu is None else torch.cuda.device_count(), Path(workdir), args.workers_per_gpu,
                        defaults=not args.no_defaults)
    (out / "gpu-served.json").write_text(json.dumps({"environment": facts, **result}, indent=2) + "\n")
    logger.info("==> wrote %s", out / "gpu-served.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
