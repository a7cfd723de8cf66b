"""LitServe as a benchmark baseline: its own dynamic batching around the same model code and answers
as the FastAPI baseline (our handler's load, the docs' plain collate, our native JSON answers).

    BENCH_MODEL=tabular python -m scripts.measure.baselines.litserve_app --port 8091

The model YAML's `batchSize` is LitServe's `max_batch_size` and its `maxBatchDelay` (ms) its
`batch_timeout` (s); one inference worker, with the torch threads our handler would take.
It answers POST /predictions/MODEL and GET /health, on 127.0.0.1 only.
"""

# No `from __future__ import annotations`: LitServer builds its route from the annotation *object*
# of decode_request's `request` parameter, and a string there would not resolve in litserve.server.

import argparse
import logging
import os
from typing import Annotated, Any

import litserve as ls
import torch
from fastapi import Body

from handlers.batch import native_answers
from handlers.runtime import set_worker_threads, worker_threads
from scripts.measure.baselines.plain_handler import load_model, model_files, plain_batch

logger = logging.getLogger(__name__)
DEFAULT_PORT = 8091


class BenchAPI(ls.LitAPI):
    """One model behind LitServe's batching loop: decode per request, collate and run per batch."""

    def __init__(self, kind: str) -> None:
        config = model_files(kind)[1]
        super().__init__(max_batch_size=int(config.get("batchSize", 1)),
                         batch_timeout=int(config.get("maxBatchDelay", 100)) / 1000,
                         api_path=f"/predictions/{kind}")
        self.kind = kind
        self.model: Any = None  # set in setup, in the inference worker: the server process never loads it

    def setup(self, device: str) -> None:
        """Load once per worker, with the intra-op threads our handler takes for this model."""
        model_dir, config = model_files(self.kind)
        self.model = load_model(self.kind, model_dir, config, torch.device(device))
        set_worker_threads(worker_threads(self.model.options.threads, config))
        logger.info("litserve %s on %s: batch %d, timeout %.3fs, %d threads", self.kind, device,
                    self.max_batch_size, self.batch_timeout, torch.get_num_threads())

    def decode_request(self, request: Annotated[Any, Body()]) -> Any:
        """The body as FastAPI reads it: JSON parsed (application/json), anything else raw bytes (digits).

        LitServe's default (a `Request` annotation) calls `request.json()`, which fails on an image body.
        """
        return request

    def batch(self, inputs: list[Any]) -> Any:
        return plain_batch(self.kind, self.model, inputs)

    def predict(self, x: Any) -> Any:
        if self.max_batch_size == 1:  # LitServe calls batch and unbatch only when it batches
            return self.unbatch(self._forward(self.batch([x])))[0]
        return self._forward(x)

    def _forward(self, batch: Any) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.inference(batch).cpu()

    def unbatch(self, output: torch.Tensor) -> list[Any]:
        return native_answers(self.model, self.model.postprocess(output), len(output))

    def encode_response(self, output: Any) -> Any:
        return output


def server(kind: str) -> ls.LitServer:
    """LitServer with one worker; fast_queue (a ZeroMQ broker process) stays off, as does request tracking."""
    accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    return ls.LitServer(BenchAPI(kind), accelerator=accelerator, devices=1, workers_per_device=1,
                        fast_queue=False, track_requests=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--port", type=int, default=int(os.environ.get("BENCH_PORT", DEFAULT_PORT)))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    # One HTTP process; no client.py written into the working directory; no access log.
    server(os.environ.get("BENCH_MODEL", "tabular")).run(
        host="127.0.0.1", port=args.port, num_api_servers=1, log_level="warning",
        generate_client_file=False, access_log=False)
    return 0


if __name__ == "__main__":  # the guard matters: LitServe spawns its worker, which re-imports this module
    raise SystemExit(main())
