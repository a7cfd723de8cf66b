"""Where a request's time goes, for one model served with its YAML settings under closed-loop load.

    python -m scripts.measure.breakdown --model minilm [--concurrency 32] [--duration 20]
        [--options backend=onnx] [--model-config batchSize=8,maxBatchDelay=20] [--out results/breakdown]

Three views of the same locust run, side by side:
  latency    per request: what the client saw, TorchServe's own latency and queue
             time (ts_inference_latency_microseconds, ts_queue_latency_microseconds),
             and each of our handler's stages (HandlerStageSeconds: decode, collate
             (tokenization), inference, encode, serialize), per batch; the remainder
             is the frontend's hand-off to the worker and back (IPC, TorchServe's
             Python worker loop).
  CPU        seconds of CPU each process used during the run (the Java frontend, the
             Python worker, locust), per request: on 2 shared cores this is what caps
             throughput.
  profile    py-spy's samples of the worker (idle included), sorted into the same
             stages by the functions on the stack: the share of the worker's wall time.

Output: results/breakdown/MODEL[-options]/report.md and results.json.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from scripts.build.archive import build_archive
from scripts.build.checks import load_buildable
from scripts.client.prometheus import Sample, increase, scrape
from scripts.config.model import CONFIG_DIR
from scripts.measure.loadgen import LoadResult, run_load, workload
from scripts.measure.variants import option_overrides, option_specs, save_results
from scripts.serve.local import LocalServer

STAGES = ("preprocess", "collate", "inference", "postprocess", "serialize")
STAGE_LABELS = {"preprocess": "decode (parse, validate)", "collate": "collate (tokenization, padding)",
                "inference": "inference (the engine)", "postprocess": "encode (rows to answers)",
                "serialize": "serialize (json.dumps)"}
# Profile buckets: the first rule that matches a frame, walking from the innermost frame outward.
# A frame reads "Class.function (path:line)" (or "function (path:line)") in py-spy's collapsed output.
_OURS = r"^(\w+\.)?({}) \("  # one of our functions, with or without its class
_RULES = (
    # TorchServe's worker blocks in _retrieve_buffer (socket recv, a C call) until the next batch arrives.
    ("idle (waiting for the next batch)", r"^_retrieve_buffer \(ts/protocol/otf_message_handler"),
    ("serialize (json.dumps)", r"json/encoder\.py|^dumps \(json"),
    ("metrics and logging", r"handlers/metrics\.py|logging/__init__\.py"),
    ("inference (the engine)", r"handlers/engines\.py|handlers/architectures\.py|transformers/|torch/nn/|"
                               + _OURS.format("inference") + r"|^TextBatch\.run \("),
    ("collate (tokenization, padding)", _OURS.format("collate") + r"|handlers/text\.py"),
    ("encode (rows to answers)", _OURS.format("_answer|postprocess|native_answers|frame|"
                                              "per_instance")),
    ("decode (parse, validate)", _OURS.format("_read|read|admit|preprocess|parse|open_envelope")),
    ("TorchServe worker (framing, IPC)", r"ts/protocol/|ts/service\.py|model_service_worker\.py|"
                                         r"ts/context\.py"),
)
PROFILE_RULES = tuple((label, re.compile(pattern)) for label, pattern in _RULES)


def classify(frames: list[str]) -> str:
    """The profile bucket of one stack (outermost frame first)."""
    for frame in reversed(frames):
        for label, pattern in PROFILE_RULES:
            if pattern.search(frame):
                return label
    return "other"


def profile_shares(collapsed: str) -> dict[str, float]:
    """py-spy's collapsed stacks ('frame;frame;... count' per line) -> each bucket's share of samples."""
    counts: collections.Counter[str] = collections.Counter()
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            frames = [frame for frame in stack.split(";") if not frame.startswith("process ")]
            counts[classify(frames)] += int(count)
    samples = sum(counts.values())
    if not samples:
        return {}
    return {label: counts[label] / samples for label in sorted(counts, key=lambda k: -counts[k])}


def latency_rows(before: list[Sample], after: list[Sample], name: str, client: LoadResult) -> list[list[Any]]:
    """Per-request milliseconds: client, TorchServe, queue, each handler stage (per batch), remainder."""
    def grew(metric: str, **labels: str) -> float:
        return increase(before, after, metric, **labels)

    requests = grew("ts_inference_requests_total", model_name=name)
    frontend_ms = grew("ts_inference_latency_microseconds_total", model_name=name) / requests / 1000
    queue_ms = grew("ts_queue_latency_microseconds_total", model_name=name) / requests / 1000
    rows: list[list[Any]] = [["client (locust mean)", client.mean_ms, None],
                             ["TorchServe total (ts_inference_latency)", frontend_ms, 1.0],
                             ["frontend queue (ts_queue_latency, incl. the batch wait)", queue_ms,
                              queue_ms / frontend_ms]]
    handler_ms = 0.0
    for stage in STAGES:
        batches = grew("HandlerStageSeconds_count", ModelName=name, Stage=stage)
        if batches:
            stage_ms = 1000 * grew("HandlerStageSeconds_sum", ModelName=name, Stage=stage) / batches
            handler_ms += stage_ms
            rows.append([f"handler {STAGE_LABELS[stage]}, per batch", stage_ms, stage_ms / frontend_ms])
    rest = frontend_ms - queue_ms - handler_ms
    rows.append(["rest: hand-off to the worker and back (IPC, TorchServe's worker loop)", rest,
                 rest / frontend_ms])
    return rows


class CpuMeter:
    """CPU seconds used by each process of interest between start() and stop()."""

    def __init__(self, processes: dict[str, psutil.Process]) -> None:
        self.processes = processes
        self.before: dict[str, float] = {}

    @staticmethod
    def _seconds(process: psutil.Process) -> float:
        times = process.cpu_times()
        return times.user + times.system

    def start(self) -> None:
        self.before = {label: self._seconds(p) for label, p in self.processes.items()}

    def stop(self) -> dict[str, float]:
        return {label: self._seconds(p) - self.before[label] for label, p in self.processes.items()}


def frontend_process(server: LocalServer) -> psutil.Process:
    """The Java frontend of `server` (its launcher only waits for it)."""
    launcher = psutil.Process(server.process.pid)
    return next(p for p in [launcher, *launcher.children(recursive=True)] if "java" in p.name())


def server_processes(server: LocalServer, worker_pid: int) -> dict[str, psutil.Process]:
    """The Java frontend and the model's worker."""
    return {"frontend (Java)": frontend_process(server), "worker (Python)": psutil.Process(worker_pid)}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    spec = load_buildable(CONFIG_DIR / f"{args.model}.yaml")
    if args.options:
        (spec,) = option_specs(spec, (args.options,)).values()
    if args.model_config:  # e.g. the batching of an earlier release, for a before/after
        spec = dataclasses.replace(spec, model_config={**spec.model_config,
                                                       **option_overrides(args.model_config)})
    load = workload(args.model)
    load_before = os.getloadavg()[0]  # anything else running skews every figure on 2 cores
    with tempfile.TemporaryDirectory(prefix=f"breakdown-{args.model}-") as tmp:
        workdir = Path(tmp)
        bodies = load.write(workdir / "bodies.json")
        print(f"==> building {spec.name}.mar", flush=True)
        build_archive(spec, workdir / "store")
        with LocalServer.start(workdir / "server", workdir / "store", [spec.name]) as server:
            path = f"/predictions/{spec.name}"
            print(f"==> warming up for {args.warmup:g}s at {args.concurrency} clients", flush=True)
            run_load(server.inference_url, path, bodies, args.concurrency, args.warmup, workdir)
            with server.client() as client:
                (description,) = client.describe(spec.name)
            worker_pid = int(description["workers"][0]["pid"])
            meter = CpuMeter(server_processes(server, worker_pid))
            profile_file = workdir / "profile.txt"
            spy = start_profiler(worker_pid, args.duration, profile_file) if args.profile else None
            before = scrape(server.metrics_url)
            meter.start()
            print(f"==> measuring for {args.duration:g}s at {args.concurrency} clients"
                  f"{' with py-spy on the worker' if spy else ''}", flush=True)
            result = run_load(server.inference_url, path, bodies, args.concurrency, args.duration, workdir,
                              settle=0.0)
            cpu = meter.stop()
            cpu["load generator (locust)"] = result.locust_cpu * result.wall_s * (psutil.cpu_count() or 1)
            time.sleep(1.5)  # the workers' metric lines reach the frontend through their log stream
            after = scrape(server.metrics_url)
            if spy is not None:
                spy.wait(timeout=args.duration + 60)
            collapsed = profile_file.read_text() if profile_file.exists() else ""
    shares = profile_shares(collapsed)
    return {"model": args.model, "options": ",".join(t for t in (args.options, args.model_config) if t),
            "concurrency": args.concurrency,
            "load_average_before": load_before,
            "duration_s": args.duration, "config": dict(spec.model_config),
            "throughput": result.throughput, "requests": result.requests, "failures": result.failures,
            "latency_ms": latency_rows(before, after, spec.name, result),
            "cpu_seconds": cpu, "profile_shares": shares, "profile": collapsed}


def start_profiler(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the worker (idle stacks too) without pausing it, or None when not installed."""
    beside_python = Path(sys.executable).with_name("py-spy")  # the venv's, when PATH does not name it
    spy = str(beside_python) if beside_python.exists() else shutil.which("py-spy")
    if spy is None:
        print("    py-spy not found: no profile (it is in the bench extra: make install-dev)", flush=True)
        return None
    command = [spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200",
               "--format", "raw", "--idle", "--nonblocking", "--output", str(out)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def report_text(found: dict[str, Any]) -> str:
    options = f" with {found['options']}" if found["options"] else ""
    title = f"{found['model']}{options}: where a request's time goes, {found['concurrency']} clients"
    lines = [f"# {title}",
             "", f"{found['throughput']:.1f} req/s, {found['requests']} requests, "
             f"{found['failures']} errors, "
             f"{found['duration_s']:g} s. Config: batchSize {found['config'].get('batchSize')}, "
             f"maxBatchDelay {found['config'].get('maxBatchDelay')} ms. Load average before: "
             f"{found['load_average_before']:.2f}.", "",
             "| where | ms per request | share of TorchServe's latency |", "| --- | ---: | ---: |"]
    for label, ms, share in found["latency_ms"]:
        shown = "" if share is None else f"{100 * share:.0f}%"
        lines.append(f"| {label} | {ms:.2f} | {shown} |")
    requests = max(found["requests"], 1)
    lines += ["", "| process | CPU s | CPU ms per request | share of 2 cores |",
              "| --- | ---: | ---: | ---: |"]
    for label, seconds in found["cpu_seconds"].items():
        share = seconds / (found["duration_s"] * (psutil.cpu_count() or 1))
        lines.append(f"| {label} | {seconds:.1f} | {1000 * seconds / requests:.2f} | {100 * share:.0f}% |")
    if found["profile_shares"]:
        lines += ["", "| worker wall time (py-spy, idle included) | share |", "| --- | ---: |"]
        lines += [f"| {label} | {100 * share:.1f}% |" for label, share in found["profile_shares"].items()]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--options", default="", help="handler options to change, key=value[,key=value]")
    parser.add_argument("--model-config", default="", help="model_config keys to change, e.g. batchSize=8")
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="skip py-spy")
    parser.add_argument("--out", type=Path, default=Path("results/breakdown"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    args = parse_args(argv)
    found = measure(args)
    changed = found["options"]
    suffix = f"-{re.sub(r'[^A-Za-z0-9]+', '_', changed)}" if changed else ""
    out = args.out / f"{args.model}{suffix}-c{args.concurrency}"
    collapsed = found.pop("profile")
    save_results(out, found, report_text(found), started)
    if collapsed:  # py-spy's collapsed stacks: flamegraph.pl or speedscope read them
        (out / "profile.txt").write_text(collapsed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
