"""How slow is the first request after a worker turns READY? Warm-up on against warm-up off.

    python -m scripts.measure.coldstart [--models tabular digits minilm] [--repeats 3] [--requests 40]

For each model, the archive as configured and one with `warmup: false` are each
registered on a private TorchServe (synchronously: the call returns when the
worker is READY), `--repeats` times with a fresh worker each time. Each time:
the first request's latency, then `--requests` more one after another (their
p50 is the steady state). Reported per variant: median first-request latency,
median steady p50 and their ratio (the target: at most 2). Output in --out.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from scripts.build.archive import build_archive
from scripts.build.checks import load_buildable
from scripts.build.heldout import held_out
from scripts.config.model import CONFIG_DIR
from scripts.measure.variants import option_specs, save_results
from scripts.serve.local import LocalServer


def timed_post(url: str, body: bytes, content_type: str) -> float:
    """Milliseconds for one prediction; a non-200 answer is an error, not a figure."""
    started = time.perf_counter()
    response = requests.post(url, data=body, headers={"Content-Type": content_type}, timeout=120)
    elapsed = 1000 * (time.perf_counter() - started)
    response.raise_for_status()
    return elapsed


def measure(server: LocalServer, archive: str, name: str, model: str, requests_after: int,
            batch_size: int, max_batch_delay: int) -> dict[str, float]:
    """Register (READY on return), time the first request and the steady ones, unregister."""
    data = held_out(model, limit=requests_after + 1)
    started = time.perf_counter()
    server.register(archive, name, batch_size=batch_size, max_batch_delay=max_batch_delay)
    ready_s = time.perf_counter() - started
    url = f"{server.inference_url}/predictions/{name}"
    try:
        first = timed_post(url, data.bodies[0], data.content_type)
        steady = [timed_post(url, body, data.content_type) for body in data.bodies[1:]]
    finally:
        server.unregister(name)
    return {"ready_s": ready_s, "first_ms": first, "steady_p50_ms": statistics.median(steady)}


def run(models: list[str], repeats: int, requests_after: int) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="coldstart-") as tmp:
        workdir, store = Path(tmp), Path(tmp) / "store"
        archives: list[tuple[str, str, str, bool, int, int]] = []
        for model in models:
            spec = load_buildable(CONFIG_DIR / f"{model}.yaml")
            cold = option_specs(spec, ("warmup=false",))["ours+warmup=false"]
            config = spec.model_config
            batch = (int(config.get("batchSize", 1)), int(config.get("maxBatchDelay", 100)))
            for variant, warm in ((spec, True), (cold, False)):
                print(f"==> archiving {variant.name}", flush=True)
                build_archive(variant, store)
                archives.append((model, f"{variant.name}.mar", variant.name, warm, *batch))
        print("==> starting TorchServe", flush=True)
        with LocalServer.start(workdir / "server", store, []) as server:
            for model, archive, name, warm, batch_size, delay in archives:
                runs = []
                for number in range(repeats):
                    found = measure(server, archive, name, model, requests_after, batch_size, delay)
                    runs.append(found)
                    print(f"    {model:<8} warmup={str(warm).lower():<5} run {number + 1}: READY after "
                          f"{found['ready_s']:5.1f}s, first {found['first_ms']:7.1f} ms, steady p50 "
                          f"{found['steady_p50_ms']:6.1f} ms", flush=True)
                first = statistics.median(r["first_ms"] for r in runs)
                steady = statistics.median(r["steady_p50_ms"] for r in runs)
                rows.append({"model": model, "warmup": warm, "first_ms": first, "steady_p50_ms": steady,
                             "ratio": first / steady,
                             "ready_s": statistics.median(r["ready_s"] for r in runs), "runs": runs})
    return rows


def report(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | warm-up | READY after s | first request ms | steady p50 ms | first / p50 |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['model']} | {'on' if r['warmup'] else 'off'} | {r['ready_s']:.1f} | "
              f"{r['first_ms']:.1f} | {r['steady_p50_ms']:.1f} | {r['ratio']:.2f} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tabular", "digits", "minilm"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("results/coldstart"))
    args = parser.parse_args(argv)
    started = time.monotonic()
    rows = run(args.models, args.repeats, args.requests)
    save_results(args.out, rows, report(rows), started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
