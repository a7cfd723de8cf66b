"""TorchServe's frontend settings side by side: its own logging against ours, on the same model and load.

    python -m scripts.measure.frontend --model tabular [--concurrency 1 32] [--rounds 3] [--duration 8]

One private TorchServe per variant, all up at once (an idle frontend and worker cost next to
nothing), measured with locust in interleaved rounds (A B C, A B C, ...) so a drifting machine
spreads over all of them. Per variant and concurrency: the median requests/s and p50, and the
Java frontend's CPU time per request (psutil), which on 2 cores is what the frontend takes
from the worker. Variants:

    torchserve   TorchServe's own log4j2.xml: the frontend logger at DEBUG ("Waiting time ns",
                 "Backend response time", "Sending response" per request, each written twice)
    log          configs/log4j2.xml: the frontend logger at INFO, written once
    log+async    configs/log4j2.xml and async_logging=true (log4j's asynchronous loggers)

Output: results/frontend/MODEL.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import statistics
import tempfile
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from scripts.build.archive import build_archive
from scripts.build.checks import load_buildable
from scripts.config.model import CONFIG_DIR
from scripts.measure.breakdown import CpuMeter, frontend_process
from scripts.measure.loadgen import run_load, workload
from scripts.serve.local import LocalServer, project_frontend

VARIANTS: dict[str, Mapping[str, str]] = {
    "torchserve": {"vmargs": ""},  # no vmargs: TorchServe's own log4j2.xml
    "log": project_frontend(),  # what configs/*.properties ship
    "log+async": {**project_frontend(), "async_logging": "true"},
}


def log_lines(log_dir: Path) -> int:
    """Lines the frontend wrote to ts_log, the files log4j rolled at 100 MB (ts_log.*.log.gz) included."""
    rolled = sum(gzip.decompress(path.read_bytes()).count(b"\n") for path in log_dir.glob("ts_log.*.gz"))
    return rolled + (log_dir / "ts_log.log").read_bytes().count(b"\n")


def measure(model: str, concurrency: list[int], rounds: int, duration: float) -> dict[str, Any]:
    spec = load_buildable(CONFIG_DIR / f"{model}.yaml")
    samples: dict[tuple[str, int], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix=f"frontend-{model}-") as tmp, ExitStack() as servers:
        workdir = Path(tmp)
        build_archive(spec, workdir / "store")
        bodies = workload(model).write(workdir / "bodies.json")
        started = {}
        for name, extra in VARIANTS.items():
            print(f"==> starting TorchServe: {name}", flush=True)
            started[name] = servers.enter_context(
                LocalServer.start(workdir / name, workdir / "store", [model], extra=dict(extra)))
        for server in started.values():  # warm every variant before the first timed round
            run_load(server.inference_url, f"/predictions/{model}", bodies, max(concurrency), 3, workdir)
        for number, users in itertools.product(range(1, rounds + 1), concurrency):
            for name, server in started.items():
                meter = CpuMeter({"java": frontend_process(server)})
                meter.start()
                result = run_load(server.inference_url, f"/predictions/{model}", bodies, users, duration,
                                  workdir)
                java_ms = meter.stop()["java"] * 1e3 / max(1, result.requests)
                samples.setdefault((name, users), []).append(
                    {"requests_per_s": result.throughput, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms,
                     "java_cpu_ms_per_request": java_ms, "failures": result.failures})
                print(f"    round {number} c={users:<3} {name:<11} {result.throughput:8.1f} req/s  "
                      f"p50 {result.p50_ms:6.1f} ms  Java CPU {java_ms:5.2f} ms/request  "
                      f"failures {result.failures} of {result.requests}", flush=True)
        for name in started:  # evidence that each variant logged as it says
            print(f"    {name}: {log_lines(workdir / name / 'logs')} lines in ts_log", flush=True)
    return {f"{name} c={users}": {key: statistics.median(s[key] for s in runs) for key in runs[0]}
            for (name, users), runs in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", default="tabular")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=Path("results/frontend"))
    args = parser.parse_args(argv)
    found = measure(args.model, args.concurrency, args.rounds, args.duration)
    print(f"\n{args.model}, median of {args.rounds} rounds:")
    print("| variant | req/s | p50 ms | Java CPU ms per request | failures |")
    for label, row in found.items():
        print(f"| {label} | {row['requests_per_s']:.1f} | {row['p50_ms']:.1f} | "
              f"{row['java_cpu_ms_per_request']:.2f} | {row['failures']:.0f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.model}.json").write_text(json.dumps(
        {"rounds": args.rounds, "duration_s": args.duration, "variants": VARIANTS, "medians": found},
        indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
