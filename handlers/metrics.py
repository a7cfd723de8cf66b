"""The handler's own metrics, declared in configs/metrics.yaml and exported by TorchServe.

Each worker's `context.metrics` is TorchServe's metrics cache, built from the
`metrics_config` file the server was started with; the frontend reads metric
lines from the worker's log stream and exports the declared ones on the metrics
port. A metric missing from that file (or a context without metrics, as in a
bare unit test) is skipped: metrics must never fail a request.

One batch's metrics go out as one log record (several lines) in the line format
of TorchServe's `CachingMetric.emit_metrics`, with the unit, type and dimension
names the cache declares. Emitting them one by one through `add_or_update`
cost about 100 µs per batch (a record, a flush and a hostname lookup each),
which on a small model is a measurable share of the worker's time.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from ts.metrics.metric_type_enum import MetricTypes

logger = logging.getLogger("ts.metrics.handler")
_HOSTNAME = socket.gethostname()
# The frontend splits dimensions at "," and name from value at ":"; "|" ends the field.
_DIMENSION_UNSAFE = re.compile(r"[,:|]")
_DECLARED = {
    "HandlerStageSeconds": MetricTypes.HISTOGRAM, "BatchRequests": MetricTypes.HISTOGRAM,
    "BatchInstances": MetricTypes.HISTOGRAM, "HandlerResponses_total": MetricTypes.COUNTER,
    "HandlerErrors_total": MetricTypes.COUNTER, "DeviceMemoryAllocatedBytes": MetricTypes.GAUGE,
    "InFlightRequests": MetricTypes.GAUGE, "HandlerEngine": MetricTypes.GAUGE,
}
_PID = str(os.getpid())


def model_identity(context: Any) -> tuple[str, str]:
    """(name, version) the model is served under: the registered name (which may differ from
    the archive's manifest when registered with `model_name=`) and the manifest's version."""
    manifest = (getattr(context, "manifest", None) or {}).get("model", {})
    name = getattr(context, "model_name", None) or manifest.get("modelName", "")
    return str(name), str(manifest.get("modelVersion", ""))


class HandlerMetrics:
    """Stage times, batch sizes, statuses and errors, with model name and version as dimensions.

    Values are collected during a batch and written by `flush()` at its end.
    """

    def __init__(self, context: Any) -> None:
        self._model = model_identity(context)
        self._declared = _declared_metrics(getattr(context, "metrics", None))
        self._lines: list[str] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time one stage of a batch (decode, collate, inference, encode) into HandlerStageSeconds."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add_stage(name, time.perf_counter() - start)

    def add_stage(self, name: str, seconds: float) -> None:
        """One stage's time, measured by the caller (for stages interleaved request by request)."""
        self._add("HandlerStageSeconds", seconds, name)

    def in_flight(self, requests: int) -> None:
        """This worker's batch in progress (0 when idle), per worker pid.

        The drain (scripts/operate/drain.py) reads it to know that no batch is inside a
        worker: TorchServe's own queue figure counts only requests not yet taken. The
        start of a batch is flushed at once; its end goes out with the batch's other metrics.
        """
        self._add("InFlightRequests", requests, _PID)
        if requests:
            self.flush()

    def batch(self, requests: int, instances: int) -> None:
        self._add("BatchRequests", requests)
        self._add("BatchInstances", instances)

    def outcomes(self, statuses: Counter[int], errors: Counter[str]) -> None:
        for status, count in statuses.items():
            self._add("HandlerResponses_total", count, str(status))
        for kind, count in errors.items():
            self._add("HandlerErrors_total", count, kind)

    def engine(self, label: str) -> None:
        """What runs this worker's model (`torch on cuda:0`, `onnxruntime CPUExecutionProvider on cpu`),
        once at start: a gauge of 1 per worker pid, so a dashboard can tell a GPU left idle."""
        self._add("HandlerEngine", 1, label, _PID)
        self.flush()

    def device_memory(self, device: torch.device) -> None:
        if device.type == "cuda":
            self._add("DeviceMemoryAllocatedBytes", torch.cuda.memory_allocated(device),
                      f"{device.type}{device.index or 0}")

    def flush(self) -> None:
        """Write this batch's metric lines as one log record."""
        if self._lines:
            logger.info("\n".join(self._lines))
            self._lines.clear()

    def _add(self, name: str, value: float, *dimensions: str) -> None:
        metric = self._declared.get(name)
        if metric is None:
            return
        values = (*self._model, *dimensions)
        dimension_text = ",".join(f"{n}:{_DIMENSION_UNSAFE.sub('_', v)}"
                                  for n, v in zip(metric.dimension_names, values, strict=True))
        self._lines.append(f"[METRICS]{name}.{metric.unit}:{value}|#{dimension_text}|"
                           f"#type:{metric.metric_type.name}|#hostname:{_HOSTNAME},{int(time.time())}")


def _declared_metrics(cache: Any) -> dict[str, Any]:
    """Our metrics as the server's metrics config declares them (name -> TorchServe metric)."""
    if cache is None:
        return {}
    declared = {}
    for name, kind in _DECLARED.items():
        try:
            declared[name] = cache.get_metric(name, kind)
        except Exception:  # noqa: BLE001 - not declared in this server's metrics config
            logger.warning("metric %s is not in the server's metrics config; not emitting it", name)
    return declared
