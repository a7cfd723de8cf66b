"""Sweep batchSize x maxBatchDelay x workers for one model at several loads; recommend the setting
that costs least at every one of them.

    python -m scripts.measure.tune --model minilm [--concurrency 1 8 32] [--p99-budget-ms 500]
        [--batch-sizes 1 8 16] [--delays 1 2 10] [--workers 1] [--rounds 2] [--duration 6] [--quick]
        [--device gpu]   (the default where CUDA works: the YAML's gpu: profile, TorchServe's GPUs)

Every combination is registered at once on one private TorchServe (the model's
archive under another name, with `batch_size`, `max_batch_delay` and a worker
count) and measured with locust at each concurrency, in interleaved rounds
(A B C, A B C, ...), so drifts on a shared machine spread over all of them.
Each cell is the median over the rounds.

The load profile is "any of these concurrencies": a setting's score is its
worst ratio to the best setting measured at the same concurrency, and the
recommendation is the highest score among settings without errors whose p99 stays
within the budget (when one is given) at every concurrency. A setting that wins at
32 clients but makes one client wait for a batch that never fills scores low.
The table is printed; the recommendation goes to results/tune/MODEL/recommendation.yaml
as a `model_config` snippet to copy into configs/models/MODEL.yaml. Configs are
never rewritten.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from scripts.build.archive import build_archive
from scripts.build.checks import load_buildable
from scripts.config.model import CONFIG_DIR
from scripts.measure.bench import median_result
from scripts.measure.loadgen import LoadResult, run_load, workload
from scripts.serve.local import LocalServer


@dataclass(frozen=True)
class Combination:
    batch_size: int
    max_batch_delay: int
    workers: int

    @property
    def label(self) -> str:
        return f"{self.batch_size} / {self.max_batch_delay} ms / {self.workers}w"


def score(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each combination's ratio to the best at every concurrency, and its worst ratio (the score)."""
    best = {c: max(row["cells"][c]["throughput"] for row in rows) for c in rows[0]["cells"]}
    for row in rows:
        row["ratios"] = {c: row["cells"][c]["throughput"] / best[c] for c in best}
        row["score"] = min(row["ratios"].values())
    return rows


def best(rows: list[dict[str, Any]], budget_ms: float | None) -> dict[str, Any] | None:
    """The highest-scoring combination without errors whose p99 is within budget at every load."""
    def fits(row: dict[str, Any]) -> bool:
        cells = row["cells"].values()
        return all(c["failures"] == 0 and (budget_ms is None or c["p99_ms"] <= budget_ms) for c in cells)

    return max((row for row in rows if fits(row)), key=lambda row: row["score"], default=None)


def recommendation_yaml(model: str, row: dict[str, Any], budget_ms: float | None, device: str = "cpu") -> str:
    """The chosen setting as a snippet of the model YAML: model_config, or the gpu: profile on a GPU."""
    combo = row["combination"]
    section = "gpu" if device == "gpu" else "model_config"
    snippet = {section: {"batchSize": combo["batch_size"], "maxBatchDelay": combo["max_batch_delay"],
                         "minWorkers": combo["workers"], "maxWorkers": combo["workers"]}}
    loads = ", ".join(f"{c} clients {cell['throughput']:.1f} req/s "
                      f"({100 * row['ratios'][c]:.0f}% of the best)" for c, cell in row["cells"].items())
    budget = f", p99 <= {budget_ms:g} ms at every load" if budget_ms is not None else ""
    return (f"# make tune MODEL={model}: the setting whose worst ratio to the best at each load is highest"
            f"{budget}\n# measured: {loads}. Copy these keys into configs/models/{model}.yaml ({section}:).\n"
            + yaml.safe_dump(snippet, sort_keys=False))


def sweep(args: argparse.Namespace) -> list[dict[str, Any]]:
    spec = load_buildable(CONFIG_DIR / f"{args.model}.yaml", device=args.device)
    gpus = torch.cuda.device_count() if args.device == "gpu" else 0
    grid = itertools.product(args.batch_sizes, args.delays, args.workers)
    # batchSize 1 never waits, whatever the delay: one setting, not one per delay
    combos = list(dict.fromkeys(Combination(b, d if b > 1 else 0, w) for b, d, w in grid))
    measured: dict[tuple[Combination, int], list[LoadResult]] = {}
    with tempfile.TemporaryDirectory(prefix=f"tune-{args.model}-") as tmp:
        workdir = Path(tmp)
        bodies = workload(args.model).write(workdir / "bodies.json")
        print(f"==> building {spec.name}.mar ({args.device} profile) and starting TorchServe "
              f"(number_of_gpu={gpus})", flush=True)
        build_archive(spec, workdir / "store")
        with LocalServer.start(workdir / "server", workdir / "store", [],
                               extra={"number_of_gpu": str(gpus)}) as server:
            names = {}
            for number, combo in enumerate(combos, 1):
                names[combo] = f"{spec.name}_tune{number}"
                print(f"    registering {combo.label} as {names[combo]}", flush=True)
                server.register(f"{spec.name}.mar", names[combo], combo.batch_size, combo.max_batch_delay,
                                combo.workers)
            if args.warmup > 0:
                print(f"==> warming up every setting for {args.warmup:g}s", flush=True)
                for combo in combos:
                    run_load(server.inference_url, f"/predictions/{names[combo]}", bodies,
                             max(args.concurrency), args.warmup, workdir)
            for users, number in itertools.product(args.concurrency, range(1, args.rounds + 1)):
                for combo in combos:
                    path = f"/predictions/{names[combo]}"
                    result = run_load(server.inference_url, path, bodies, users, args.duration, workdir,
                                      server.metrics_url, names[combo])
                    measured.setdefault((combo, users), []).append(result)
                    batch = f"{result.mean_batch:.1f}" if result.mean_batch else "n/a"
                    print(f"    round {number} c={users:<3} {combo.label:<18} "
                          f"{result.throughput:8.1f} req/s"
                          f"  p50 {result.p50_ms:6.1f} ms  p99 {result.p99_ms:6.1f} ms  "
                          f"errors {result.failures}  batch {batch}", flush=True)
    rows = [{"combination": asdict(combo), "label": combo.label,
             "cells": {users: median_result(measured[combo, users]) for users in args.concurrency}}
            for combo in combos]
    return score(rows)


def table(rows: list[dict[str, Any]], concurrency: list[int]) -> str:
    head = " | ".join(f"c={c} req/s | c={c} p99 ms" for c in concurrency)
    lines = [f"| batchSize / maxBatchDelay / workers | {head} | worst ratio to the best |",
             "| --- | " + " | ".join("---: | ---:" for _ in concurrency) + " | ---: |"]
    for row in sorted(rows, key=lambda r: -r["score"]):
        cells = " | ".join(f"{row['cells'][c]['throughput']:.1f} ({100 * row['ratios'][c]:.0f}%) | "
                           f"{row['cells'][c]['p99_ms']:.0f}" for c in concurrency)
        errors = sum(cell["failures"] for cell in row["cells"].values())
        lines.append(f"| {row['label']}{f' ({errors} errors)' if errors else ''} | {cells} | "
                     f"{row['score']:.2f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--p99-budget-ms", type=float,
                        help="the latency budget at every load (default: none)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32],
                        help="the loads of the profile (default 1 8 32)")
    parser.add_argument("--batch-sizes", type=int, nargs="+")
    parser.add_argument("--delays", type=int, nargs="+", help="maxBatchDelay values in ms")
    parser.add_argument("--workers", type=int, nargs="+")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per cell, median kept (default 2)")
    parser.add_argument("--duration", type=float)
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="seconds of load on each setting before any is measured; 0: none (default 5)")
    parser.add_argument("--quick", action="store_true", help="a small grid and short runs")
    parser.add_argument("--out", type=Path, default=Path("results/tune"))
    parser.add_argument("--device", choices=("cpu", "gpu"),
                        help="the YAML profile and TorchServe's GPUs (default: gpu with CUDA, else cpu)")
    args = parser.parse_args(argv)
    args.device = args.device or ("gpu" if torch.cuda.is_available() else "cpu")
    args.batch_sizes = args.batch_sizes or ([1, 16] if args.quick else [1, 8, 16])
    args.delays = args.delays or ([1] if args.quick else [1, 2, 10])
    args.workers = args.workers or [1]
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.duration = args.duration or (4.0 if args.quick else 6.0)
    return args


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    args = parse_args(argv)
    rows = sweep(args)
    out = args.out / args.model
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps({"concurrency": args.concurrency, "rounds": args.rounds,
                                                "duration_s": args.duration, "rows": rows}, indent=2) + "\n")
    print("\n" + table(rows, args.concurrency))
    chosen = best(rows, args.p99_budget_ms)
    if chosen is None:
        print("no combination ran without errors and within the p99 budget at every load; "
              "raise the budget, drop a concurrency or add workers")
        return 1
    text = recommendation_yaml(args.model, chosen, args.p99_budget_ms, args.device)
    (out / "recommendation.yaml").write_text(text)
    print(f"recommended (written to {out / 'recommendation.yaml'}):\n{text}")
    print(f"wrote {out}/ in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
