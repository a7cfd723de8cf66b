"""The worst legal batch of each model, timed against its responseTimeout: in-process and served.

    python -m scripts.measure.worst_batch [--models tabular digits minilm] [--repeats 3] [--no-served]

A model's worst legal request is the most work its handler options let one request
carry (`worst_request`); batchSize of them make the worst legal batch. A request
over its budget (max_request_pixels, max_request_tokens, ...) is refused with 413
before any work, so no legal batch takes longer than this one, and the YAML's
responseTimeout should leave at least 3x over it (docs/requests.md#timeouts).

- in-process: the batch through scripts.harness (TorchServe's Context, no server);
- served: a private TorchServe serving an archive built from the YAML. One worst
  request goes first, so the batch queues behind it and reaches the worker whole;
  the figure runs from that request's answer to the batch's last answer, about
  the worker's time for the batch, which is what responseTimeout bounds. Our
  BatchRequests metric says how many requests that batch held.

Each is run `--repeats` times; medians go to the report, every run to --out.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import struct
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import requests

from handlers.modules import handler_class
from handlers.options import parse_options
from scripts.build import datasets
from scripts.build.archive import build_archive
from scripts.build.checks import load_buildable
from scripts.client.prometheus import Sample, increase, scrape, settled_scrape
from scripts.config.model import CONFIG_DIR, ModelSpec
from scripts.harness import LocalModel, RawRequest
from scripts.measure.variants import save_results
from scripts.serve.local import LocalServer

# How long the first request runs alone before the batch is sent behind it: long enough for the frontend
# to hand it to the worker (a few ms), well inside its run (minilm's worst legal request now takes about
# 0.15 s here: at 0.2 s the batch sometimes arrived at an idle worker and was split).
LEAD_S = 0.05
CJK = "日本語のテキストを埋め込みます。"  # one token per character: the tokenizer's slowest text we found


@dataclass(frozen=True)
class Worst:
    """A model's worst legal request, and what it holds in words."""

    request: RawRequest
    holds: str


def handler_options(spec: ModelSpec) -> Any:
    """The handler's options as its worker parses them from the YAML (defaults included)."""
    return parse_options(handler_class(spec.handler).Options, spec.model_config.get("handler"))


def worst_request(spec: ModelSpec) -> Worst:
    """The most work one request may carry under the model's handler options."""
    options = handler_options(spec)
    build: dict[str, Callable[[Any], Worst]] = {
        "digits": _worst_digits, "minilm": _worst_minilm, "tabular": _worst_tabular}
    return build[spec.name](options)


def transparent_png(side: int, index: int = 0) -> bytes:
    """A side x side 16-bit RGBA PNG of held-out digit `index`, on a transparent background.

    The costliest image per pixel we measured (about 40-50 ns a pixel on one core:
    decode, alpha over white, grey, resize), and small on the wire (flat areas compress).
    """
    return _png_rgba16(_digit_pixels(side, index))


def digits_request(images: Sequence[bytes]) -> RawRequest:
    """A native digits request carrying `images` as base64 JSON."""
    return RawRequest.json({"image": [base64.b64encode(image).decode() for image in images]})


def worst_texts(count: int, chars: int) -> list[str]:
    """`count` texts of `chars` characters each, every character a token of its own."""
    text = (CJK * (chars // len(CJK) + 1))[:chars]
    return [text] * count


def _worst_digits(options: Any) -> Worst:
    budget, per_image = options.max_request_pixels, options.max_pixels
    side = int(min(per_image, budget) ** 0.5)
    count = max(1, min(options.max_instances, budget // (side * side)))
    sides = [side] * count
    rest = int((budget - count * side * side) ** 0.5)
    if rest and count < options.max_instances:
        sides.append(rest)
    pixels = sum(s * s for s in sides)
    return Worst(digits_request([transparent_png(s) for s in sides]),
                 f"{len(sides)} 16-bit RGBA PNGs, {' + '.join(f'{s}x{s}' for s in sides)} = {pixels} pixels")


def _worst_minilm(options: Any) -> Worst:
    count = max(1, min(options.max_instances, options.max_request_tokens // options.max_length))
    chars = min(options.max_chars, options.max_request_chars // count)
    return Worst(RawRequest(json.dumps({"text": worst_texts(count, chars)}, ensure_ascii=False).encode(),
                            "application/json"),
                 f"{count} texts x {chars} characters (each truncated to {options.max_length} tokens) = "
                 f"{count * options.max_length} tokens, {count * chars} characters")


def _worst_tabular(options: Any) -> Worst:
    rows = np.random.default_rng(0).standard_normal((options.max_instances, 30)) * 1000
    return Worst(RawRequest.json({"features": rows.tolist()}),
                 f"{options.max_instances} rows of 30 features")


def in_process(spec: ModelSpec, batch: list[RawRequest], repeats: int) -> list[float]:
    """Seconds for the whole batch through the handler, `repeats` times (all must answer 200)."""
    times = []
    with LocalModel.from_config(spec.source) as model:
        for _ in range(repeats):
            started = time.perf_counter()
            results = model.run(batch)
            times.append(time.perf_counter() - started)
            _check_ok([result.status for result in results], spec.name)
    return times


def served(spec: ModelSpec, batch: list[RawRequest], repeats: int, workdir: Path) -> list[dict[str, Any]]:
    """The batch against a private TorchServe serving the YAML's archive, `repeats` times."""
    print(f"==> archiving {spec.name} and starting TorchServe", flush=True)
    build_archive(spec, workdir / "store")
    runs = []
    with LocalServer.start(workdir / "server", workdir / "store", [spec.name]) as server:
        for _ in range(repeats):
            sent = burst(server, spec.name, batch[0], batch)
            _check_ok([sent.lead_status] + [response.status_code for response in sent.responses], spec.name)
            runs.append({"batch_s": sent.batch_s, "requests_in_batch": sent.requests_in_batch})
    return runs


@dataclass(frozen=True)
class Burst:
    """A batch sent behind a lead request: its answers, and the worker's time and size for it."""

    lead_status: int
    responses: list[requests.Response]
    batch_s: float  # from the lead's answer to the batch's last answer
    requests_in_batch: int | None  # requests that reached its forward pass; None if not one batch


def burst(server: LocalServer, model: str, lead: RawRequest, batch: list[RawRequest]) -> Burst:
    """`lead` alone, then `batch` at once: it queues behind the lead and reaches the worker whole."""
    url = f"{server.inference_url}/predictions/{model}"
    before = scrape(server.metrics_url)
    with ThreadPoolExecutor(len(batch) + 1) as pool:
        first = pool.submit(timed_post, url, lead)
        time.sleep(LEAD_S)
        answers = list(pool.map(lambda request: timed_post(url, request), batch))
        lead_response, lead_done = first.result()
    return Burst(lead_response.status_code, [response for response, _ in answers],
                 max(done for _, done in answers) - lead_done, batch_requests(server, model, before))


def timed_post(url: str, request: RawRequest) -> tuple[requests.Response, float]:
    """The response and when it arrived (perf_counter seconds)."""
    response = requests.post(url, data=request.body, headers={"Content-Type": request.content_type},
                             timeout=600)
    return response, time.perf_counter()


def batch_requests(server: LocalServer, model: str, before: list[Sample], wait_s: float = 15) -> int | None:
    """Requests in the forward pass after the lead one, from BatchRequests; None unless there was one."""
    after = settled_scrape(server.metrics_url, lambda samples: increase(
        before, samples, "BatchRequests_count", ModelName=model) >= 2, wait_s)
    batches = increase(before, after, "BatchRequests_count", ModelName=model)
    return int(increase(before, after, "BatchRequests_sum", ModelName=model) - 1) if batches == 2 else None


def _check_ok(statuses: list[int], model: str) -> None:
    if any(status != 200 for status in statuses):
        raise RuntimeError(f"{model}: the worst legal batch was not answered 200 every time: {statuses}")


def measure(model: str, repeats: int, serve: bool, workdir: Path) -> dict[str, Any]:
    spec = load_buildable(CONFIG_DIR / f"{model}.yaml")
    batch_size = int(spec.model_config.get("batchSize", 1))
    timeout_s = int(spec.model_config.get("responseTimeout", 120))
    worst = worst_request(spec)
    batch = [worst.request] * batch_size
    print(f"==> {model}: {batch_size} x ({worst.holds}), responseTimeout {timeout_s} s", flush=True)
    local = in_process(spec, batch, repeats)
    print(f"    in-process: {', '.join(f'{t:.2f}' for t in local)} s", flush=True)
    row: dict[str, Any] = {"model": model, "batch_size": batch_size, "request": worst.holds,
                           "response_timeout_s": timeout_s, "in_process_s": local,
                           "in_process_median_s": statistics.median(local)}
    if serve:
        runs = served(spec, batch, repeats, workdir / model)
        print("    served: " + ", ".join(f"{r['batch_s']:.2f} s ({r['requests_in_batch']} requests)"
                                         for r in runs), flush=True)
        row |= {"served": runs, "served_median_s": statistics.median(r["batch_s"] for r in runs)}
    worst_s = max(row["in_process_median_s"], row.get("served_median_s", 0.0))
    row["margin"] = timeout_s / worst_s
    return row


def report(rows: list[dict[str, Any]], load: tuple[float, float, float]) -> str:
    lines = [f"Load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs.", "",
             "| model | worst legal request | batchSize | in-process s | served s | requests in served batch "
             "| responseTimeout s | margin |",
             "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |"]
    for row in rows:
        served_s = f"{row['served_median_s']:.2f}" if "served_median_s" in row else "-"
        sizes = ", ".join(str(r["requests_in_batch"]) for r in row.get("served", [])) or "-"
        lines.append(f"| {row['model']} | {row['request']} | {row['batch_size']} | "
                     f"{row['in_process_median_s']:.2f} | {served_s} | {sizes} | "
                     f"{row['response_timeout_s']} | {row['margin']:.1f}x |")
    return "\n".join(lines) + "\n"


@cache
def _digit_pixels(side: int, index: int) -> np.ndarray:
    """RGBA 16-bit: dark ink, opaque, where the held-out digit has ink; transparent elsewhere."""
    ink = datasets.digits().held_out_x[index].reshape(8, 8) / 16.0
    block = -(-side // 8)
    cells = np.kron(ink, np.ones((block, block)))[:side, :side]
    rgba = np.zeros((side, side, 4), dtype=">u2")
    rgba[..., 3] = np.rint(cells * 65535).astype(np.uint16)  # ink is opaque black, the rest transparent
    return rgba


def _png_rgba16(rgba: np.ndarray) -> bytes:
    """The pixels as a PNG (colour type 6, 16 bits), which Pillow reads but does not write."""
    height, width = rgba.shape[:2]
    rows = np.hstack([np.zeros((height, 1), np.uint8), rgba.view(np.uint8).reshape(height, width * 8)])

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
            + chunk(b"IEND", b""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tabular", "digits", "minilm"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-served", dest="served", action="store_false",
                        help="in-process only (no TorchServe)")
    parser.add_argument("--out", type=Path, default=Path("results/worst-batch"))
    args = parser.parse_args(argv)
    started, load = time.monotonic(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="worst-batch-") as tmp:
        rows = [measure(model, args.repeats, args.served, Path(tmp)) for model in args.models]
    save_results(args.out, {"load_average": load, "models": rows}, report(rows, load), started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
