"""The handler's own work per request around the engine, this tree beside an older commit, in one run.

    python -m scripts.measure.overhead [--models tabular minilm] [--batch 64] [--rounds 200]
        [--against 5dcb478] [--zeros] [--out results/overhead]

On a GPU the engine of a batch of 64-256 takes 10-13 ms; the CPU work around it (decode,
tokenize, pad, postprocess, answer, json.dumps) decides how fast the GPU is fed. This
measures exactly that work: each model in-process (scripts.harness.LocalModel, a real
ts.context.Context, the shipped YAML), its engine swapped for one that answers at once
with rows of the right shape, and `handle()` timed for `--batch` single-instance requests
from the benchmark's own workload (scripts.measure.loadgen.workload). Turning the requests
into TorchServe's worker frames happens outside the timed region.

The engine's rows are realistic float32 values (unit vectors, probabilities) fixed by a
seed: serialising 0.0 is much cheaper than serialising 0.0123456, so zeros would flatter
json.dumps. `--zeros` answers zeros (uniform probabilities for classifiers) instead.

`--against REF` checks REF out into a temporary git worktree and measures it in a child
process that imports that tree's `handlers` and `scripts.harness` (the child runs this
file's measuring code, so REF need not have it). Rounds alternate between the two, so
whatever else the machine is doing falls on both alike. Per model it prints and writes
(results/overhead/MODEL-bBATCH.json) the median µs per request, each stage's share
(the handler's HandlerStageSeconds) and the ratio old/new.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("preprocess", "collate", "inference", "postprocess", "serialize")
WIDTHS = {"tabular": 2, "minilm": 384, "digits": 10}  # one engine row per instance
PROBABILITIES = {"tabular", "digits"}  # the network ends in softmax: postprocess reads probabilities
_STAGE_LINE = re.compile(r"HandlerStageSeconds\.\w+:([0-9.eE+-]+)\|#.*Stage:(\w+)")


def engine_rows(model: str, count: int, zeros: bool = False) -> Any:
    """`count` float32 rows as `model`'s network would answer them: unit vectors or probabilities."""
    import torch

    width = WIDTHS[model]
    if zeros:
        fill = 1.0 / width if model in PROBABILITIES else 0.0
        return torch.full((count, width), fill, dtype=torch.float32)
    rows = torch.randn(count, width, generator=torch.Generator().manual_seed(0))
    if model in PROBABILITIES:
        return torch.softmax(rows * 3, dim=1)
    return torch.nn.functional.normalize(rows, dim=1)


class InstantEngine:
    """Called as the handler calls its engine, `engine(*inputs)`: one ready row per instance."""

    def __init__(self, rows: Any) -> None:
        self.rows = rows

    def __call__(self, *inputs: Any) -> Any:
        return self.rows[: len(inputs[0])].clone()


class StageLog(logging.Handler):
    """Keeps the handler's metric records (one per batch) to read the stage times from afterwards."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def take(self) -> dict[str, float]:
        seconds: dict[str, float] = defaultdict(float)
        for record in self.records:
            for value, stage in _STAGE_LINE.findall(record.getMessage()):
                seconds[stage] += float(value)
        self.records.clear()
        return dict(seconds)


class Bench:
    """One model in this process (whichever `handlers` is importable), ready to time rounds."""

    def __init__(self, model: str, batch: int, bodies: list[bytes], content_type: str, zeros: bool,
                 store: Path) -> None:
        from scripts.harness import LocalModel, RawRequest

        self.batch = batch
        self.local = LocalModel.from_config(Path("configs/models") / f"{model}.yaml", store=store)
        self.local.handler.engine = InstantEngine(engine_rows(model, batch, zeros))
        self.requests = [RawRequest(bodies[n % len(bodies)], content_type) for n in range(batch)]
        self.log = StageLog()
        metrics_logger = logging.getLogger("ts.metrics.handler")
        metrics_logger.addHandler(self.log)
        metrics_logger.setLevel(logging.INFO)
        metrics_logger.propagate = False

    def round(self) -> dict[str, Any]:
        """One timed handle() of the batch: µs per request in all and per stage, and the statuses."""
        from ts.service import Service

        from scripts.harness import to_wire

        frames = [to_wire(number, request) for number, request in enumerate(self.requests)]
        headers, data, request_ids = Service.retrieve_data_for_inference(frames)
        context = self.local.context
        context.request_ids, context.request_processor = request_ids, headers
        started = time.perf_counter()
        bodies = self.local.handler.handle(data, context)
        elapsed = time.perf_counter() - started
        statuses = [context.get_response_status(index)[0] or 200 for index in range(len(bodies))]
        stages = {stage: seconds * 1e6 / self.batch for stage, seconds in self.log.take().items()}
        return {"us": elapsed * 1e6 / self.batch, "stages": stages,
                "ok": sum(status == 200 for status in statuses)}

    def close(self) -> None:
        logging.getLogger("ts.metrics.handler").removeHandler(self.log)
        self.local.close()


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds: µs per request in all and per stage ("other": handle() outside them)."""
    stages = {stage: statistics.median(r["stages"].get(stage, 0.0) for r in rounds) for stage in STAGES}
    total = statistics.median(r["us"] for r in rounds)
    return {"us_per_request": total, "stages": {**stages, "other": max(0.0, total - sum(stages.values()))},
            "rounds": len(rounds), "min_ok": min(r["ok"] for r in rounds)}


def measure(model: str, batch: int = 64, rounds: int = 200, warmup: int = 10, zeros: bool = False,
            against: Path | None = None, store: Path = ROOT / "model_store",
            progress: bool = False, env: dict[str, str] | None = None) -> dict[str, Any]:
    """This tree's handler for `model` (and with `against`, that tree's in a child, rounds alternating).

    `env`: the child's environment (default: this process's); main() passes the one it started
    with, since a handler's setup may set variables (TOKENIZERS_PARALLELISM) the old tree never set.
    """
    from scripts.measure.loadgen import workload

    work = workload(model)
    child = None
    if against is not None:
        child = _Child(against, model, batch, work.bodies, work.content_type, zeros, store, env)
    bench = Bench(model, batch, work.bodies, work.content_type, zeros, store)
    results: dict[str, list[dict[str, Any]]] = {"new": [], "old": []}
    try:
        for number in range(warmup + rounds):
            sides = ["new", "old"] if number % 2 else ["old", "new"]
            for side in sides:
                if side == "new":
                    result = bench.round()
                elif child is not None:
                    result = child.round()
                else:
                    continue
                if number >= warmup:
                    results[side].append(result)
            if progress and (number + 1) % max(1, (warmup + rounds) // 10) == 0:
                print(f"  {model} batch {batch}: round {number + 1}/{warmup + rounds}"
                      + "".join(f", {side} {results[side][-1]['us']:.0f} µs/request"
                                for side in ("old", "new") if results[side]), file=sys.stderr, flush=True)
    finally:
        bench.close()
        if child is not None:
            child.close()
    report = {"model": model, "batch": batch, "zeros": zeros, "new": summarize(results["new"])}
    if child is not None:
        report["old"] = summarize(results["old"])
        report["ratio"] = report["old"]["us_per_request"] / report["new"]["us_per_request"]
    return report


class _Child:
    """The same measurement in another process whose `handlers` come from `tree`, one round per ask."""

    def __init__(self, tree: Path, model: str, batch: int, bodies: list[bytes], content_type: str,
                 zeros: bool, store: Path, env: dict[str, str] | None = None) -> None:
        from scripts.measure.loadgen import Workload

        self.folder = tempfile.TemporaryDirectory(prefix="overhead-")
        work = Workload(content_type, bodies).write(Path(self.folder.name) / "bodies.json")
        command = [sys.executable, str(Path(__file__).resolve()), "--child", str(tree), "--models", model,
                   "--batch", str(batch), "--bodies", str(work), "--store", str(store)]
        self.process = subprocess.Popen(command + (["--zeros"] if zeros else []), cwd=tree, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self._read()  # "ready" once the handler is initialised

    def _read(self) -> Any:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the measuring child exited ({self.process.wait()}); its stderr says why")
        return json.loads(line)

    def round(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write("round\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)
        self.folder.cleanup()


def serve_child(tree: Path, model: str, batch: int, bodies_file: Path, zeros: bool, store: Path) -> None:
    """The child's side: import `tree`'s packages, then answer one JSON round per line read."""
    sys.path.insert(0, str(tree))
    document = json.loads(bodies_file.read_text())
    import base64

    bodies = [base64.b64decode(body) for body in document["bodies"]]
    bench = Bench(model, batch, bodies, document["content_type"], zeros, store)
    import handlers

    if Path(handlers.__file__).resolve().parent != tree.resolve() / "handlers":
        raise RuntimeError(f"the child imported {handlers.__file__}, not {tree}'s handlers")
    print(json.dumps({"ready": True}), flush=True)
    for _ in sys.stdin:
        print(json.dumps(bench.round()), flush=True)
    bench.close()


def worktree(ref: str) -> tuple[Path, tempfile.TemporaryDirectory[str]]:
    """`ref` checked out in a temporary git worktree, with this checkout's built weights beside it."""
    folder = tempfile.TemporaryDirectory(prefix="overhead-ref-")
    tree = Path(folder.name) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(tree), ref],
                   check=True)
    (tree / "build").symlink_to(ROOT / "build")  # git-ignored: the weights the YAMLs list
    return tree, folder


def remove_worktree(tree: Path, folder: tempfile.TemporaryDirectory[str]) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    folder.cleanup()
    subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=False)


def table(report: dict[str, Any]) -> str:
    """One model's figures as Markdown: µs per request in all and per stage, old and new."""
    sides = [side for side in ("old", "new") if side in report]
    lines = [f"{report['model']}, batch {report['batch']}: µs per request (median of "
             f"{report['new']['rounds']} rounds)", "",
             "| | " + " | ".join(sides) + (" | old/new |" if "old" in report else " |"),
             "|---" * (len(sides) + 1 + ("old" in report)) + "|"]
    for row in ("total", *STAGES, "other"):
        values = [report[side]["us_per_request"] if row == "total" else report[side]["stages"][row]
                  for side in sides]
        ratio = f" | {values[0] / values[1]:.2f}x" if "old" in report and values[1] > 0 else (
            " | -" if "old" in report else "")
        lines.append(f"| {row} | " + " | ".join(f"{value:.1f}" for value in values) + ratio + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tabular", "minilm"], choices=sorted(WIDTHS))
    parser.add_argument("--batch", type=int, default=64, help="single-instance requests per batch (64, 256)")
    parser.add_argument("--rounds", type=int, default=200, help="timed batches per side, after 10 warm-up")
    parser.add_argument("--against", default="5dcb478",
                        help="the commit to compare with (default: the code before this script); '' for none")
    parser.add_argument("--zeros", action="store_true", help="the engine answers zeros, not realistic values")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "overhead")
    parser.add_argument("--store", type=Path, default=ROOT / "model_store", help=argparse.SUPPRESS)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # the --against side's process
    parser.add_argument("--bodies", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.child is not None:
        serve_child(args.child, args.models[0], args.batch, args.bodies, args.zeros, args.store.resolve())
        return 0
    import os

    env = dict(os.environ)  # before any handler's setup changes it
    os.chdir(ROOT)  # the YAMLs name their files relative to the repository root
    tree, folder = worktree(args.against) if args.against else (None, None)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        for model in args.models:
            print(f"{model}: batch {args.batch}, {args.rounds} rounds"
                  + (f", alternating with {args.against}" if tree else ""), file=sys.stderr, flush=True)
            report = measure(model, args.batch, args.rounds, zeros=args.zeros, against=tree,
                             store=args.store.resolve(), progress=True, env=env)
            report["against"] = args.against
            print(table(report) + "\n", flush=True)
            suffix = "-zeros" if args.zeros else ""
            path = args.out / f"{model}-b{args.batch}{suffix}.json"
            path.write_text(json.dumps(report, indent=2) + "\n")
            print(f"wrote {path}", file=sys.stderr)
    finally:
        if tree is not None and folder is not None:
            remove_worktree(tree, folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
