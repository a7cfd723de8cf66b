"""Resident memory of 1, 2 and 4 workers of one model, per engine: memory-mapped weights against
private copies, and ONNX Runtime.

    python -m scripts.measure.memory [--model minilm] [--workers 1 2 4] [--out results/memory]
        [--variants backend=torch,mmap_weights=true backend=torch,mmap_weights=false backend=onnx]

For each variant (handler options; by default the torch backend with `mmap_weights`
true and false, and ONNX Runtime, whose session keeps its own copy of the weights), the
model is registered on a private TorchServe and scaled to each worker count; after a few requests, every
worker process's RSS, PSS and USS are read from /proc (psutil). PSS splits each
shared page between the processes that map it, so the PSS sum is the physical
memory the workers cost together; the RSS sum counts shared pages once per worker.

The target (issue 5): total(4 workers) <= 1.5 x weights + 4 x runtime overhead,
where the overhead is one worker's PSS minus the weights file's size.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import requests

from scripts.build.archive import build_archive
from scripts.build.checks import load_buildable
from scripts.build.heldout import held_out
from scripts.config.model import CONFIG_DIR
from scripts.measure.variants import option_specs, save_results
from scripts.serve.local import LocalServer

MB = 1e6


def worker_processes(server: LocalServer) -> list[psutil.Process]:
    """The Python worker processes under this TorchServe (its frontend's children)."""
    children = psutil.Process(server.process.pid).children(recursive=True)
    return [child for child in children if "model_service_worker" in " ".join(child.cmdline())]


def measure(server: LocalServer, name: str, model: str) -> dict[str, Any]:
    """Send a few requests so every worker has served, then sum its memory figures."""
    data = held_out(model, limit=32)
    for body in data.bodies:
        requests.post(f"{server.inference_url}/predictions/{name}", data=body,
                      headers={"Content-Type": data.content_type}, timeout=120).raise_for_status()
    time.sleep(1)
    figures = [process.memory_full_info() for process in worker_processes(server)]
    return {"workers": len(figures),
            "rss_mb": sum(f.rss for f in figures) / MB, "pss_mb": sum(f.pss for f in figures) / MB,
            "uss_mb_each": [round(f.uss / MB, 1) for f in figures]}


VARIANTS = ("backend=torch,mmap_weights=true", "backend=torch,mmap_weights=false", "backend=onnx")


def run(model: str, worker_counts: list[int], options: tuple[str, ...] = VARIANTS) -> dict[str, Any]:
    spec = load_buildable(CONFIG_DIR / f"{model}.yaml")
    weights = next(file for file in spec.files if file.suffix == ".safetensors")
    rows = []
    with tempfile.TemporaryDirectory(prefix="memory-") as tmp:
        workdir, store = Path(tmp), Path(tmp) / "store"
        variants = option_specs(spec, options)
        for variant in variants.values():
            print(f"==> archiving {variant.name}", flush=True)
            build_archive(variant, store)
        with LocalServer.start(workdir / "server", store, []) as server:
            for label, variant in variants.items():
                for workers in worker_counts:
                    server.register(f"{variant.name}.mar", variant.name,
                                    batch_size=int(spec.model_config.get("batchSize", 1)),
                                    max_batch_delay=int(spec.model_config.get("maxBatchDelay", 100)),
                                    workers=workers)
                    try:
                        found = {"variant": label.removeprefix("ours+").removeprefix("backend=torch,"),
                                 **measure(server, variant.name, model)}
                    finally:
                        server.unregister(variant.name)
                    rows.append(found)
                    print(f"    {found['variant']:<18} {found['workers']} workers: "
                          f"RSS {found['rss_mb']:7.1f} MB, PSS {found['pss_mb']:7.1f} MB, "
                          f"USS each {found['uss_mb_each']}", flush=True)
    return {"model": model, "weights_mb": weights.stat().st_size / MB, "rows": rows}


def report(result: dict[str, Any]) -> str:
    weights = result["weights_mb"]
    lines = [f"weights file: {weights:.1f} MB", "",
             "| weights | workers | sum of RSS MB | sum of PSS MB | USS per worker MB | target MB | met |",
             "| --- | ---: | ---: | ---: | --- | ---: | --- |"]
    one = {row["variant"]: row["pss_mb"] for row in result["rows"] if row["workers"] == 1}
    for row in result["rows"]:
        overhead = one[row["variant"]] - weights
        target = 1.5 * weights + row["workers"] * overhead
        lines.append(f"| {row['variant']} | {row['workers']} | {row['rss_mb']:.0f} | {row['pss_mb']:.0f} | "
                     f"{', '.join(f'{u:.0f}' for u in row['uss_mb_each'])} | {target:.0f} | "
                     f"{'yes' if row['pss_mb'] <= target else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), metavar="KEY=VALUE[,KEY=VALUE]",
                        help="handler options of each variant measured")
    parser.add_argument("--out", type=Path, default=Path("results/memory"))
    args = parser.parse_args(argv)
    started = time.monotonic()
    result = run(args.model, args.workers, tuple(args.variants))
    save_results(args.out, result, report(result), started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
