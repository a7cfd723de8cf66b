"""Sweep batchSize x maxBatchDelay x workers for one model and recommend the best config.

    python -m scripts.measure.tune --model minilm --p99-budget-ms 200 [--concurrency 32]
        [--batch-sizes 1 4 8 16] [--delays 5 20 50] [--workers 1 2] [--duration 8] [--quick]

Every combination is registered on one private TorchServe (the model's archive
under another name, with `batch_size`, `max_batch_delay` and a worker count),
warmed up and measured with locust at the target concurrency. The recommendation
is the highest throughput whose p99 stays within the budget (with no errors).
The table is printed; the recommendation goes to results/tune/MODEL/recommendation.yaml
as a `model_config` snippet to copy into configs/models/MODEL.yaml. Configs are
never rewritten.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from scripts.build.archive import build_archive
from scripts.config.model import CONFIG_DIR, load_spec
from scripts.measure.loadgen import LoadResult, run_load, workload
from scripts.serve.local import LocalServer


@dataclass(frozen=True)
class Combination:
    batch_size: int
    max_batch_delay: int
    workers: int


def best(rows: list[dict[str, Any]], budget_ms: float) -> dict[str, Any] | None:
    """The highest-throughput row whose p99 is within budget and which had no errors."""
    within = [row for row in rows if row["p99_ms"] <= budget_ms and row["failures"] == 0]
    return max(within, key=lambda row: row["throughput"], default=None)


def recommendation_yaml(model: str, row: dict[str, Any], budget_ms: float, concurrency: int) -> str:
    snippet = {"model_config": {"batchSize": row["batch_size"], "maxBatchDelay": row["max_batch_delay"],
                                "minWorkers": row["workers"], "maxWorkers": row["workers"]}}
    return (f"# make tune MODEL={model}: best throughput with p99 <= {budget_ms:g} ms at {concurrency} "
            f"concurrent clients\n# measured {row['throughput']:.1f} req/s, p99 {row['p99_ms']:.0f} ms. "
            f"Copy these keys into configs/models/{model}.yaml.\n" + yaml.safe_dump(snippet, sort_keys=False))


def sweep(args: argparse.Namespace) -> list[dict[str, Any]]:
    spec = load_spec(CONFIG_DIR / f"{args.model}.yaml")
    grid = itertools.product(args.batch_sizes, args.delays, args.workers)
    combos = [Combination(*values) for values in grid]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix=f"tune-{args.model}-") as tmp:
        workdir = Path(tmp)
        bodies = workload(args.model).write(workdir / "bodies.json")
        print(f"==> building {spec.name}.mar and starting TorchServe", flush=True)
        build_archive(spec, workdir / "store")
        with LocalServer.start(workdir / "server", workdir / "store", []) as server:
            for number, combo in enumerate(combos, 1):
                name = f"{spec.name}_tune{number}"
                server.register(f"{spec.name}.mar", name, combo.batch_size, combo.max_batch_delay,
                                combo.workers)
                try:
                    path = f"/predictions/{name}"
                    run_load(server.inference_url, path, bodies, args.concurrency, args.warmup, workdir)
                    result: LoadResult = run_load(server.inference_url, path, bodies, args.concurrency,
                                                  args.duration, workdir, server.metrics_url, name)
                finally:
                    server.unregister(name)
                row = {**asdict(combo), **asdict(result)}
                rows.append(row)
                batch = f"{result.mean_batch:.1f}" if result.mean_batch else "n/a"
                print(f"[{number}/{len(combos)}] batch {combo.batch_size:>3} "
                      f"delay {combo.max_batch_delay:>3} ms workers {combo.workers}: "
                      f"{result.throughput:8.1f} req/s  p50 {result.p50_ms:6.0f} ms  "
                      f"p99 {result.p99_ms:6.0f} ms  errors {result.failures}  mean batch {batch}",
                      flush=True)
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--p99-budget-ms", type=float, required=True, help="the latency budget")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+")
    parser.add_argument("--delays", type=int, nargs="+", help="maxBatchDelay values in ms")
    parser.add_argument("--workers", type=int, nargs="+")
    parser.add_argument("--duration", type=float)
    parser.add_argument("--quick", action="store_true", help="a small grid and short runs")
    parser.add_argument("--out", type=Path, default=Path("results/tune"))
    args = parser.parse_args(argv)
    args.batch_sizes = args.batch_sizes or ([1, 16] if args.quick else [1, 4, 8, 16])
    args.delays = args.delays or ([10] if args.quick else [5, 20, 50])
    args.workers = args.workers or ([1] if args.quick else [1, 2])
    args.duration = args.duration or (4.0 if args.quick else 8.0)
    args.warmup = 2.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = sweep(args)
    out = args.out / args.model
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n| batchSize | maxBatchDelay | workers | req/s | p50 ms | p99 ms | errors | mean batch |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in sorted(rows, key=lambda r: -r["throughput"]):
        batch = f"{row['mean_batch']:.1f}" if row["mean_batch"] else "n/a"
        print(f"| {row['batch_size']} | {row['max_batch_delay']} | {row['workers']} | "
              f"{row['throughput']:.1f} | "
              f"{row['p50_ms']:.0f} | {row['p99_ms']:.0f} | {row['failures']} | {batch} |")
    chosen = best(rows, args.p99_budget_ms)
    if chosen is None:
        print(f"\nno combination kept p99 within {args.p99_budget_ms:g} ms without errors; "
              "raise the budget, lower --concurrency or add workers")
        return 1
    text = recommendation_yaml(args.model, chosen, args.p99_budget_ms, args.concurrency)
    (out / "recommendation.yaml").write_text(text)
    print(f"\nrecommended (written to {out / 'recommendation.yaml'}):\n{text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
