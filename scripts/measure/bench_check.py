"""Fail when a fresh quick benchmark's ratios fall more than 20% below the committed baseline.

    python -m scripts.measure.bench_check [--baseline configs/bench-baseline.json] [--update]

Ratios (ours / in-process limit, batched / batchSize 1, ours / LitServe) are measured
side by side in one run, so they travel between machines far better than raw throughput.
Every ratio the baseline names is printed and guarded.
`--update` rewrites the baseline with the median of three fresh runs (commit it
deliberately): one quick run on a shared 2-core machine can be 15% off.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from scripts.measure import bench

BASELINE = Path("configs/bench-baseline.json")


def regressions(baseline: dict[str, Any], fresh: dict[str, float]) -> list[str]:
    """One line per ratio that dropped by more than the tolerance, or went missing."""
    tolerance = float(baseline["tolerance"])
    problems = []
    for name, expected in baseline["ratios"].items():
        got = fresh.get(name)
        if got is None:
            problems.append(f"{name}: not measured")
        elif got < expected * (1 - tolerance):
            problems.append(f"{name}: {got:.3f} is more than {tolerance:.0%} below the baseline "
                            f"{expected:.3f}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--baseline", type=Path, default=BASELINE)
    parser.add_argument("--update", action="store_true",
                        help="write the median ratios of --runs fresh runs as the new baseline")
    parser.add_argument("--runs", type=int, default=3, help="runs for --update (default 3)")
    args = parser.parse_args(argv)
    baseline = json.loads(args.baseline.read_text())
    settings = bench.parse_args(baseline["bench_args"])
    runs = []
    for _ in range(args.runs if args.update else 1):
        report = bench.run(settings)
        bench.write_report(report, settings.out)
        runs.append(report["ratios"])
    fresh = {name: statistics.median(run[name] for run in runs if name in run)
             for name in baseline["ratios"] if any(name in run for run in runs)}
    if args.update and set(fresh) != set(baseline["ratios"]):
        print(f"not updating: ratios {sorted(set(baseline['ratios']) - set(fresh))} were not measured")
        return 1
    print("| ratio | baseline | fresh | change |\n| --- | ---: | ---: | ---: |")
    for name, expected in baseline["ratios"].items():
        got = fresh.get(name)
        change = f"{(got / expected - 1):+.0%}" if got and expected else "missing"
        print(f"| {name} | {expected:.3f} | {got if got is None else f'{got:.3f}'} | {change} |")
    if args.update:
        baseline["ratios"] = {name: round(fresh[name], 3) for name in baseline["ratios"]}
        baseline["update_runs"] = [{name: round(value, 3) for name, value in run.items()} for run in runs]
        args.baseline.write_text(json.dumps(baseline, indent=2) + "\n")
        print(f"baseline updated: {args.baseline}")
        return 0
    problems = regressions(baseline, fresh)
    for problem in problems:
        print(f"REGRESSION {problem}")
    print("bench-check: " + ("FAILED" if problems else "ok"))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
