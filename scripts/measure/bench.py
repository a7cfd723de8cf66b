"""Benchmark one model, every variant side by side in one run, on the same inputs.

    python -m scripts.measure.bench --model minilm [--concurrency 1 8 32] [--duration 15] [--quick]
        [--variants ours unbatched plain fastapi litserve limit] [--out results/bench]
        [--options backend=torch backend=torch,quantize=int8 compile=true ...]

Variants:
  ours       our handler in TorchServe, with the model YAML's batch settings
  unbatched  the same archive registered with batchSize 1
  plain      a plain BaseHandler as TorchServe's docs show (scripts/measure/baselines/plain_handler.py)
  fastapi    one FastAPI + uvicorn process calling the model per request
  litserve   LitServe with the YAML's batchSize and maxBatchDelay, one worker, same model code
             (scripts/measure/baselines/litserve_app.py); paused (SIGSTOP) while the others are
             measured, since its idle worker polls its queue every millisecond
  limit      the model called in-process at the YAML's batchSize: no HTTP, no queue
             (instances per second; the ceiling the HTTP variants can approach)
  --options  one more "ours" per argument, archived with those handler options changed
             (comma-separated key=value, values read as YAML), measured like ours and
             with its own in-process limit: the before/after of one option, in one run

For each HTTP variant and concurrency: a warm-up, then locust for --duration
seconds. Output in --out/MODEL/: report.md (the table), results.json (every
figure), throughput.png and p99.png (against concurrency).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import requests
import torch

from handlers.batch import forward_batch, instances_of
from scripts.build.archive import build_archive
from scripts.build.checks import load_buildable
from scripts.config.model import CONFIG_DIR, ModelSpec
from scripts.harness import LocalModel
from scripts.measure.loadgen import LoadResult, Workload, run_load, workload
from scripts.measure.variants import option_overrides, option_specs
from scripts.serve.local import LocalServer, free_port, stop_group, wait_until_answering

logger = logging.getLogger(__name__)
HTTP_VARIANTS = ("ours", "unbatched", "plain", "fastapi", "litserve")
BASELINE_ENGINE = {"backend": "torch", "quantize": "none"}  # plain, fastapi, litserve: eager PyTorch
ALL_VARIANTS = (*HTTP_VARIANTS, "limit")


@dataclasses.dataclass(frozen=True)
class Settings:
    model: str
    concurrency: tuple[int, ...]
    duration: float
    warmup: float
    jvm_warmup: float  # once per endpoint before any measurement: the JIT compiles the hot paths
    rounds: int
    variants: tuple[str, ...]
    out: Path
    options: tuple[str, ...] = ()  # extra "ours" variants: handler option overrides, "k=v,k=v"


def limit_throughput(archive: Path, load: Workload, seconds: float, batch_size: int) -> dict[str, float]:
    """Instances per second of collate + predict on decoded inputs, batch_size at a time, in-process."""
    with LocalModel.from_mar(archive) as local:
        handler = local.handler
        decoded = [instances_of(handler, body, load.content_type) for body in load.bodies]
        batches = [decoded[i:i + batch_size] for i in range(0, len(decoded) - batch_size + 1, batch_size)]
        for batch in batches[:3]:  # warm-up
            forward_batch(handler, batch, sum(len(item) for item in batch))
        done, started, timings = 0, time.perf_counter(), []
        while time.perf_counter() - started < seconds:
            batch = batches[len(timings) % len(batches)]
            tick = time.perf_counter()
            forward_batch(handler, batch, sum(len(item) for item in batch))
            timings.append(time.perf_counter() - tick)
            done += sum(len(item) for item in batch)
        elapsed = time.perf_counter() - started
    timings.sort()
    return {"batch_size": batch_size, "threads": torch.get_num_threads(),
            "instances_per_second": done / elapsed, "batch_p50_ms": 1000 * timings[len(timings) // 2]}


def build_archives(settings: Settings, spec: ModelSpec, store: Path) -> dict[str, Path]:
    """The archive of every TorchServe variant wanted (ours, each --options one, plain)."""
    print(f"==> building archives for {spec.name} in {store}", flush=True)
    specs = {"ours": spec, **option_specs(spec, settings.options)}
    if "plain" in settings.variants:
        # The baselines run the eager PyTorch module, as the docs' handler would: no export to derive.
        eager = {**spec.model_config.get("handler", {}), **BASELINE_ENGINE}
        specs["plain"] = dataclasses.replace(
            spec, name=f"{spec.name}_plain", handler=Path("scripts/measure/baselines/plain_handler.py"),
            model_config={**spec.model_config, "handler": eager, "plain": {"model": settings.model}})
    archives = {}
    for variant, variant_spec in specs.items():
        print(f"    {variant}: {variant_spec.name}.mar", flush=True)
        archives[variant] = build_archive(variant_spec, store)
    return archives


@contextmanager
def torchserve(settings: Settings, spec: ModelSpec, archives: dict[str, Path],
               workdir: Path) -> Iterator[tuple[LocalServer, dict[str, str]]]:
    """One TorchServe serving every TorchServe variant wanted; yields it and variant -> model name."""
    names = {variant: archive.stem for variant, archive in archives.items()}
    print("==> starting TorchServe", flush=True)
    store = next(iter(archives.values())).parent
    with LocalServer.start(workdir / "server", store, list(names.values())) as server:
        if "unbatched" in settings.variants:
            names["unbatched"] = f"{spec.name}_unbatched"
            server.register(f"{spec.name}.mar", names["unbatched"], batch_size=1,
                            max_batch_delay=int(spec.model_config.get("maxBatchDelay", 100)))
        yield server, names


@dataclasses.dataclass(frozen=True)
class Served:
    """A baseline server bench.py started: where it answers, and its process group."""

    url: str
    group: int


@contextmanager
def served(command: list[str], model: str, port: int, ping: str, log: Path, what: str,
           grace: float = 30) -> Iterator[Served]:
    """Run `command` (serving `model` on loopback `port`) in a process group of its own; yield it once
    GET `ping` answers 200; then stop the whole group (SIGKILL after `grace` s), since a server may
    leave worker processes behind."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, env={**os.environ, "BENCH_MODEL": model}, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(lambda: requests.get(f"{url}{ping}", timeout=2).raise_for_status(), process,
                             timeout=120, what=f"{what} (log: {log})")
        yield Served(url, process.pid)
    finally:
        stop_group(process, grace)


@contextmanager
def fastapi_app(model: str, workdir: Path) -> Iterator[Served]:
    """uvicorn serving scripts/measure/baselines/fastapi_app.py on a free loopback port."""
    port = free_port()
    # asyncio and h11 pinned: what uvicorn picked before litserve brought uvloop and httptools in,
    # so the fastapi figures stay comparable with those already published.
    command = [sys.executable, "-m", "uvicorn", "scripts.measure.baselines.fastapi_app:app",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--loop", "asyncio",
               "--http", "h11", "--log-level", "warning", "--no-access-log"]
    with served(command, model, port, "/ping", workdir / "fastapi.log", "the FastAPI app") as found:
        yield found


@contextmanager
def litserve_app(model: str, workdir: Path) -> Iterator[Served]:
    """scripts/measure/baselines/litserve_app.py on a free loopback port (its /health: workers ready)."""
    port = free_port()
    command = [sys.executable, "-m", "scripts.measure.baselines.litserve_app", "--port", str(port)]
    # A short grace: its worker and queue die on SIGTERM at once, and its uvicorn process would then
    # wait its full 30 s graceful shutdown for requests still in flight that can no longer be answered.
    with served(command, model, port, "/health", workdir / "litserve.log", "the LitServe app",
                grace=5) as found:
        yield found


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where one HTTP variant answers, and the model name its metrics carry (None: no metrics)."""

    variant: str
    host: str
    path: str
    metrics_url: str | None
    model_label: str | None
    paused_group: int | None = None  # a process group stopped while the other variants are measured


def focus(endpoints: list[Endpoint], active: Endpoint | None) -> None:
    """Continue `active`'s paused group and stop every other one (None: continue them all), so a
    server that polls while idle (LitServe) takes no CPU from the variant being measured."""
    for endpoint in endpoints:
        if endpoint.paused_group is not None:
            os.killpg(endpoint.paused_group, signal.SIGCONT if active in (None, endpoint) else signal.SIGSTOP)


def measure_all(settings: Settings, endpoints: list[Endpoint], bodies: Path,
                workdir: Path) -> list[dict[str, Any]]:
    """Every variant at every concurrency, in interleaved rounds; per cell, each figure's median.

    Interleaving (A B C, A B C, ...) spreads slow drifts (JIT warm-up, page cache,
    other load) over all variants instead of charging them to whichever runs first.
    """
    print(f"==> warming up every endpoint for {settings.jvm_warmup:g}s", flush=True)
    for endpoint in endpoints if settings.jvm_warmup > 0 else []:
        focus(endpoints, endpoint)
        run_load(endpoint.host, endpoint.path, bodies, max(settings.concurrency), settings.jvm_warmup,
                 workdir)
    rows = []
    for users in settings.concurrency:
        rounds: dict[str, list[LoadResult]] = {endpoint.variant: [] for endpoint in endpoints}
        for number in range(settings.rounds):
            for endpoint in endpoints:
                focus(endpoints, endpoint)
                if settings.warmup > 0:
                    run_load(endpoint.host, endpoint.path, bodies, users, settings.warmup, workdir)
                result = run_load(endpoint.host, endpoint.path, bodies, users, settings.duration, workdir,
                                  endpoint.metrics_url, endpoint.model_label)
                rounds[endpoint.variant].append(result)
                batch = f"{result.mean_batch:.1f}" if result.mean_batch else "n/a"
                print(f"    round {number + 1} {endpoint.variant:<10} c={users:<3} "
                      f"{result.throughput:8.1f} req/s  p50 {result.p50_ms:6.1f} ms  "
                      f"p99 {result.p99_ms:6.1f} ms  errors {result.failures}  batch {batch}  "
                      f"locust CPU {100 * result.locust_cpu:.0f}%", flush=True)
        rows += [{"variant": variant, "concurrency": users, **median_result(results)}
                 for variant, results in rounds.items()]
    focus(endpoints, None)
    return rows


def median_result(results: list[LoadResult]) -> dict[str, Any]:
    """Each figure's median over the rounds (errors summed), and every round's throughput."""
    median = statistics.median
    batches = [r.mean_batch for r in results if r.mean_batch is not None]
    return {
        "requests": sum(r.requests for r in results), "failures": sum(r.failures for r in results),
        "throughput": median(r.throughput for r in results),
        "p50_ms": median(r.p50_ms for r in results), "p95_ms": median(r.p95_ms for r in results),
        "p99_ms": median(r.p99_ms for r in results), "locust_cpu": median(r.locust_cpu for r in results),
        "mean_batch": median(batches) if batches else None,
        "rounds_throughput": [round(r.throughput, 1) for r in results],
    }


def run(settings: Settings) -> dict[str, Any]:
    spec = load_buildable(CONFIG_DIR / f"{settings.model}.yaml")
    load = workload(settings.model)
    limit = None
    with tempfile.TemporaryDirectory(prefix=f"bench-{settings.model}-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        bodies = load.write(workdir / "bodies.json")
        archives = build_archives(settings, spec, workdir / "store")
        if "limit" in settings.variants:
            limit = limits(settings, spec, load, {k: v for k, v in archives.items() if k != "plain"})
        endpoints: dict[str, Endpoint] = {}
        if any(v in settings.variants for v in ("ours", "unbatched", "plain")):
            server, names = stack.enter_context(torchserve(settings, spec, archives, workdir))
            for variant, name in names.items():
                endpoints[variant] = Endpoint(variant, server.inference_url, f"/predictions/{name}",
                                              server.metrics_url, name if variant != "plain" else None)
        if "fastapi" in settings.variants:
            print("==> starting the FastAPI app", flush=True)
            found = stack.enter_context(fastapi_app(settings.model, workdir))
            endpoints["fastapi"] = Endpoint("fastapi", found.url, f"/predictions/{settings.model}", None,
                                            None)
        if "litserve" in settings.variants:
            print("==> starting the LitServe app", flush=True)
            found = stack.enter_context(litserve_app(settings.model, workdir))
            endpoints["litserve"] = Endpoint("litserve", found.url, f"/predictions/{settings.model}", None,
                                             None, paused_group=found.group)
        options = [variant for variant in endpoints if variant.startswith("ours+")]
        wanted = [*(v for v in settings.variants if v == "ours"), *options,
                  *(v for v in settings.variants if v != "ours")]
        ordered = [endpoints[variant] for variant in wanted if variant in endpoints]
        rows = measure_all(settings, ordered, bodies, workdir) if ordered else []
    return {"model": settings.model, "config": dict(spec.model_config), "cpu_count": os.cpu_count(),
            "duration_s": settings.duration, "rounds": settings.rounds, "limit": limit, "runs": rows,
            "ratios": ratios(rows, limit)}


def limits(settings: Settings, spec: ModelSpec, load: Workload, archives: dict[str, Path]) -> dict[str, Any]:
    """The in-process limit of ours at batchSize and at 1, and of each --options archive at batchSize."""
    print("==> in-process limit", flush=True)
    batch_size = int(spec.model_config.get("batchSize", 1))
    seconds = max(settings.duration, 3)
    limit: dict[str, Any] = limit_throughput(archives["ours"], load, seconds, batch_size)
    limit["unbatched_instances_per_second"] = limit_throughput(
        archives["ours"], load, max(settings.duration / 2, 2), 1)["instances_per_second"]
    print(f"    limit      {limit['instances_per_second']:8.1f} instances/s at batch "
          f"{limit['batch_size']}, {limit['unbatched_instances_per_second']:.1f} at batch 1 "
          f"({limit['threads']} threads)", flush=True)
    limit["options"] = {}
    for variant, archive in archives.items():
        if variant.startswith("ours+"):
            found = limit_throughput(archive, load, seconds, batch_size)
            limit["options"][variant] = found
            print(f"    limit {variant}: {found['instances_per_second']:8.1f} instances/s at batch "
                  f"{batch_size} ({found['batch_p50_ms']:.1f} ms per batch)", flush=True)
    return limit


def ratios(rows: list[dict[str, Any]], limit: dict[str, Any] | None) -> dict[str, float]:
    """The figures the targets and the regression check use, at the highest concurrency measured."""
    top = max((row["concurrency"] for row in rows), default=0)
    at_top = {row["variant"]: row["throughput"] for row in rows if row["concurrency"] == top}
    found: dict[str, float] = {}
    if "ours" in at_top and limit:
        found["ours_over_limit"] = at_top["ours"] / limit["instances_per_second"]
    for other in ("unbatched", "plain", "fastapi", "litserve"):
        if "ours" in at_top and at_top.get(other):
            found[f"ours_over_{other}"] = at_top["ours"] / at_top[other]
    for variant in at_top:
        if variant.startswith("ours+") and at_top.get("ours"):
            found[f"{variant}_over_ours"] = at_top[variant] / at_top["ours"]
    for variant, option_limit in (limit or {}).get("options", {}).items():
        found[f"limit {variant}_over_ours"] = (option_limit["instances_per_second"]
                                               / limit["instances_per_second"])  # type: ignore[index]
    return found


def write_report(report: dict[str, Any], out: Path) -> Path:
    """report.md, results.json and two plots in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["| variant | clients | req/s | p50 ms | p95 ms | p99 ms | errors | mean batch | locust CPU |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in report["runs"]:
        batch = f"{row['mean_batch']:.1f}" if row["mean_batch"] else "n/a"
        lines.append(f"| {row['variant']} | {row['concurrency']} | {row['throughput']:.1f} | "
                     f"{row['p50_ms']:.0f} | {row['p95_ms']:.0f} | {row['p99_ms']:.0f} | {row['failures']} | "
                     f"{batch} | {100 * row['locust_cpu']:.0f}% |")
    limit = report["limit"]
    if limit:
        lines.append(f"| limit, in-process, batch {limit['batch_size']} | - | "
                     f"{limit['instances_per_second']:.1f} instances/s | "
                     f"{limit['batch_p50_ms']:.1f} per batch | | | | | |")
        lines.append(f"| limit, in-process, batch 1 | - | {limit['unbatched_instances_per_second']:.1f} "
                     f"instances/s | | | | | | |")
        for variant, found in limit.get("options", {}).items():
            lines.append(f"| limit {variant}, batch {found['batch_size']} | - | "
                         f"{found['instances_per_second']:.1f} instances/s | "
                         f"{found['batch_p50_ms']:.1f} per batch | | | | | |")
    lines += ["", *(f"- {name}: {value:.2f}" for name, value in report["ratios"].items())]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    _plot(report, out)
    return out / "report.md"


def _plot(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = (("throughput", "requests / s", "throughput.png"), ("p99_ms", "p99 latency (ms)", "p99.png"))
    for field, label, name in plots:
        figure, axes = plt.subplots(figsize=(6, 4))
        for variant in dict.fromkeys(row["variant"] for row in report["runs"]):
            points = [(row["concurrency"], row[field]) for row in report["runs"] if row["variant"] == variant]
            axes.plot(*zip(*points, strict=True), marker="o", label=variant)
        if field == "throughput" and report["limit"]:
            axes.axhline(report["limit"]["instances_per_second"], linestyle="--", color="grey", label="limit")
        axes.set_xscale("log", base=2)
        axes.set_xlabel("concurrent clients")
        axes.set_ylabel(label)
        axes.set_title(f"{report['model']}: {label}")
        axes.legend()
        figure.tight_layout()
        figure.savefig(out / name, dpi=100)
        plt.close(figure)


def parse_args(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", default="minilm", help="a model in configs/models/")
    parser.add_argument("--concurrency", type=int, nargs="+", help="default 1 8 32 (quick: 32)")
    parser.add_argument("--duration", type=float, help="seconds per measurement (default 8, quick 4)")
    parser.add_argument("--rounds", type=int,
                        help="interleaved rounds per cell, median kept (default 3, quick 2)")
    parser.add_argument("--variants", nargs="+", choices=ALL_VARIANTS, default=list(ALL_VARIANTS))
    parser.add_argument("--quick", action="store_true", help="one concurrency, short runs: under 2 minutes")
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                        help="one more 'ours' variant per argument, with these handler options")
    args = parser.parse_args(argv)
    for text in args.options:
        try:
            option_overrides(text)
        except ValueError as error:
            parser.error(str(error))
    return Settings(
        model=args.model,
        concurrency=tuple(args.concurrency or ((32,) if args.quick else (1, 8, 32))),
        duration=args.duration or (4.0 if args.quick else 8.0),
        warmup=0.0 if args.quick else 3.0,  # quick: the endpoint warm-up and the drain must do
        jvm_warmup=5.0 if args.quick else 10.0,
        rounds=args.rounds or (2 if args.quick else 3),
        variants=tuple(args.variants),
        out=args.out / args.model,
        options=tuple(args.options),
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    settings = parse_args(argv)
    started = time.monotonic()
    report = run(settings)
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    path = write_report(report, settings.out)
    print(path.read_text())
    print(f"wrote {settings.out}/ in {report['wall_seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
