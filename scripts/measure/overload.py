"""`make overload MODEL=tabular`: the shipped settings at twice the load they can serve.

    python -m scripts.measure.overload --model tabular [--seconds 60] [--factor 2] [--users 8 16 32 64]

1. Saturation: closed-loop locust (each user sends its next request when the last is
   answered) at rising concurrency; the saturation rate is the most accepted (200)
   requests per second any level reached.
2. Overload: an open loop at `factor` x that rate for `seconds`: many locust users, each
   pacing itself (BENCH_USER_RATE), so requests arrive at a set rate whatever happens to
   them. A closed loop cannot overload a bounded queue (its clients wait in it), and a
   refused closed-loop client sends again at once, which multiplies the refusals.

Reported, from locust's per-response record (sent, answered, status): p50/p99 of the
accepted requests, the share refused (503), the time to refuse (p50/p99 of the 503s),
any other status, and whether the worker stayed READY without a restart. The server is
a private TorchServe (scripts/serve/local.py) serving an archive built from the shipped
configs/models/MODEL.yaml, so `jobQueueSize` and batching are what production gets.
Writes results/overload/MODEL.json and MODEL.md. The load generator shares the CPU with
the server: its own CPU share is reported, and the achieved arrival rate next to the target.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scripts.build.archive import build_archive
from scripts.build.checks import load_buildable
from scripts.config.model import CONFIG_DIR, ModelSpec
from scripts.measure.loadgen import Reply, read_replies, run_load, workload
from scripts.serve.local import LocalServer

QUEUE_FULL = 503


@dataclass(frozen=True)
class Figures:
    """What one locust run did, from its per-response record."""

    seconds: float
    requests: int
    offered_rps: float       # requests sent per second
    accepted_rps: float      # 200s per second
    share_refused: float     # 503s / requests
    accepted_p50_ms: float | None
    accepted_p99_ms: float | None
    refused_p50_ms: float | None
    refused_p99_ms: float | None
    other_statuses: dict[str, int]
    locust_cpu: float


def figures(replies: list[Reply], window: tuple[float, float], locust_cpu: float) -> Figures:
    """Figures for the requests sent within `window` (Unix times), so ramp-up is left out."""
    start, end = window
    chosen = [reply for reply in replies if start <= reply.sent < end]
    seconds = end - start
    accepted = [1000 * (r.answered - r.sent) for r in chosen if r.status == 200]
    refused = [1000 * (r.answered - r.sent) for r in chosen if r.status == QUEUE_FULL]
    others: dict[str, int] = {}
    for reply in chosen:
        if reply.status not in (200, QUEUE_FULL):
            others[str(reply.status)] = others.get(str(reply.status), 0) + 1
    return Figures(
        seconds=round(seconds, 1), requests=len(chosen), offered_rps=round(len(chosen) / seconds, 1),
        accepted_rps=round(len(accepted) / seconds, 1),
        share_refused=round(len(refused) / len(chosen), 4) if chosen else 0.0,
        accepted_p50_ms=_percentile(accepted, 50), accepted_p99_ms=_percentile(accepted, 99),
        refused_p50_ms=_percentile(refused, 50), refused_p99_ms=_percentile(refused, 99),
        other_statuses=others, locust_cpu=round(locust_cpu, 3))


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def load_run(server: LocalServer, model: str, bodies: Path, workdir: Path, users: int, seconds: float,
             skip: float, user_rate: float | None = None) -> Figures:
    """One locust run; figures over its last `seconds - skip` seconds of sends."""
    replies = workdir / f"replies-{users}-{time.monotonic_ns()}.txt"
    env = {"BENCH_RESPONSES": str(replies), **({"BENCH_USER_RATE": f"{user_rate:g}"} if user_rate else {})}
    started = time.time()
    result = run_load(server.inference_url, f"/predictions/{model}", bodies, users, seconds, workdir,
                      settle=1.0, extra_env=env)
    return figures(read_replies(replies), (started + skip, started + seconds), result.locust_cpu)


def saturation(server: LocalServer, model: str, bodies: Path, workdir: Path, levels: list[int],
               step: float) -> list[dict[str, Any]]:
    sweep = []
    for users in levels:
        found = load_run(server, model, bodies, workdir, users, step, skip=min(2.0, step / 4))
        print(f"    {users:4d} users (closed loop): {found.accepted_rps:8.1f} accepted/s, "
              f"p99 {found.accepted_p99_ms} ms, refused {found.share_refused:.1%}", flush=True)
        sweep.append({"users": users, **asdict(found)})
    return sweep


def pacing(target_rps: float, horizon_s: float, max_users: int) -> tuple[int, float]:
    """(users, requests/s per user) for an open loop at `target_rps`: each user's interval is
    at least twice the longest an accepted request should take, so users rarely fall behind."""
    user_rate = min(20.0, 1 / (2 * horizon_s))
    users = math.ceil(target_rps / user_rate)
    if users > max_users:
        users, user_rate = max_users, target_rps / max_users
    return users, round(user_rate, 3)


def worker_state(server: LocalServer, model: str) -> list[tuple[int, str]]:
    with server.client() as client:
        return sorted((worker.get("pid", 0), worker.get("status", "?"))
                      for version in client.describe(model) for worker in version.get("workers", []))


def measure(spec: ModelSpec, args: argparse.Namespace) -> dict[str, Any]:
    config = dict(spec.model_config)
    queue = int(config.get("jobQueueSize", 100))
    with tempfile.TemporaryDirectory(prefix=f"overload-{spec.name}-") as tmp:
        workdir = Path(tmp)
        bodies = workload(spec.name).write(workdir / "bodies.json")
        print(f"==> building {spec.name}.mar from {spec.source}", flush=True)
        build_archive(spec, workdir / "store")
        with LocalServer.start(workdir / "server", workdir / "store", [spec.name]) as server:
            print("==> warm-up, then the saturation sweep", flush=True)
            load_run(server, spec.name, bodies, workdir, max(args.users), args.step_seconds, skip=0)
            sweep = saturation(server, spec.name, bodies, workdir, args.users, args.step_seconds)
            best = max(sweep, key=lambda level: level["accepted_rps"])
            rates = [level["accepted_rps"] for level in sweep]
            saturated = len(rates) < 2 or rates[-1] < 1.1 * rates[-2]
            if not saturated:
                print("    warning: throughput still rose 10% or more at the last level: saturation is "
                      "higher than measured; add --users with more", flush=True)
            target = args.factor * best["accepted_rps"]
            horizon = queue / best["accepted_rps"] + (best["accepted_p99_ms"] or 0) / 1000  # wait + service
            users, user_rate = pacing(target, horizon, args.max_users)
            before = worker_state(server, spec.name)
            print(f"==> overload: open loop at {target:.0f} req/s ({args.factor:g} x {best['accepted_rps']}) "
                  f"for {args.seconds:g} s: {users} users x {user_rate} req/s", flush=True)
            over = load_run(server, spec.name, bodies, workdir, users, args.seconds + args.warmup,
                            skip=args.warmup, user_rate=user_rate)
            after = worker_state(server, spec.name)
            bound = over.offered_rps < 0.9 * target
            if bound:
                print(f"    warning: locust offered only {over.offered_rps} of {target:.0f} req/s (its CPU: "
                      f"{over.locust_cpu:.0%} of the machine): this is a smaller overload, and its latencies "
                      "include locust's own delays", flush=True)
    return {
        "model": spec.name, "config": {key: config.get(key) for key in (
            "batchSize", "maxBatchDelay", "minWorkers", "maxWorkers", "jobQueueSize")},
        "saturation": sweep, "saturation_rps": best["accepted_rps"], "saturating_users": best["users"],
        "saturated": saturated,
        "queue_drains_in_s": round(queue / best["accepted_rps"], 3),
        "overload": {"factor": args.factor, "target_rps": round(target, 1), "users": users,
                     "user_rate": user_rate, **asdict(over)},
        "generator_bound": bound, "workers_before": before, "workers_after": after,
        "worker_kept": before == after and all(status == "READY" for _, status in after),
    }


def table(result: dict[str, Any]) -> str:
    over = result["overload"]
    other = ", ".join(f"{count} x {status}" for status, count in over["other_statuses"].items()) or "none"
    rows = [
        ("jobQueueSize", result["config"]["jobQueueSize"]),
        ("saturation (closed loop)",
         f"{result['saturation_rps']} req/s at {result['saturating_users']} users"),
        ("queue drains in", f"{result['queue_drains_in_s'] * 1000:.0f} ms at that rate"),
        ("offered (target)", f"{over['offered_rps']} req/s ({over['target_rps']}, {over['users']} users)"),
        ("accepted", f"{over['accepted_rps']} req/s"),
        ("p50 / p99 accepted", f"{over['accepted_p50_ms']} / {over['accepted_p99_ms']} ms"),
        ("share refused (503)", f"{over['share_refused']:.1%}"),
        ("time to refuse p50 / p99", f"{over['refused_p50_ms']} / {over['refused_p99_ms']} ms"),
        ("other statuses", other),
        ("worker READY, not restarted", "yes" if result["worker_kept"] else "no"),
        ("locust CPU share", f"{over['locust_cpu']:.0%}"
         + (" (could not offer the target rate)" if result["generator_bound"] else "")),
    ]
    return "\n".join([f"| {result['model']} | |", "| --- | ---: |", *(f"| {k} | {v} |" for k, v in rows)])


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", default="tabular", help="a model in configs/models/")
    parser.add_argument("--users", type=int, nargs="+", default=[8, 16, 32, 64],
                        help="closed-loop concurrency levels of the saturation sweep")
    parser.add_argument("--step-seconds", type=float, default=8.0, help="seconds per sweep level")
    parser.add_argument("--factor", type=float, default=2.0, help="overload = factor x saturation")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of overload measured")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of overload left out first")
    parser.add_argument("--max-users", type=int, default=500,
                        help="most locust users in the open loop (2000 gave seconds-long tails on 2 cores, "
                        "with no TCP drop: the generator's, not the queue's)")
    parser.add_argument("--out", type=Path, default=Path("results/overload"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    spec = load_buildable(CONFIG_DIR / f"{args.model}.yaml")
    load = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    result = {"command": " ".join(["python -m scripts.measure.overload", *(argv or sys.argv[1:])]),
              "uptime_before": load, "cpus": os.cpu_count(), **measure(spec, args)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{spec.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    text = table(result)
    (args.out / f"{spec.name}.md").write_text(f"`{result['command']}` ({load})\n\n{text}\n")
    print(f"\n{text}\n\nwritten: {args.out / spec.name}.json, .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
