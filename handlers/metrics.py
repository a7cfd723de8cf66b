"""The handler's own metrics, declared in configs/metrics.yaml and exported by TorchServe.

Each worker's `context.metrics` is TorchServe's metrics cache, built from the
`metrics_config` file the server was started with. A metric missing from that
file (or a context without metrics, as in a bare unit test) is skipped
silently: metrics must never fail a request.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from ts.metrics.metric_type_enum import MetricTypes

logger = logging.getLogger(__name__)


def model_identity(context: Any) -> tuple[str, str]:
    """(name, version) the model is served under: the registered name (which may differ from
    the archive's manifest when registered with `model_name=`) and the manifest's version."""
    manifest = (getattr(context, "manifest", None) or {}).get("model", {})
    name = getattr(context, "model_name", None) or manifest.get("modelName", "")
    return str(name), str(manifest.get("modelVersion", ""))


class HandlerMetrics:
    """Stage times, batch sizes, statuses and errors, with model name and version as dimensions."""

    def __init__(self, context: Any) -> None:
        self._cache = getattr(context, "metrics", None)
        self._model = [*model_identity(context)]
        self._missing: set[str] = set()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time one stage of a batch (decode, inference, encode) into HandlerStageSeconds."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self._emit("HandlerStageSeconds", MetricTypes.HISTOGRAM, time.perf_counter() - start, name)

    def batch(self, requests: int, instances: int) -> None:
        self._emit("BatchRequests", MetricTypes.HISTOGRAM, requests)
        self._emit("BatchInstances", MetricTypes.HISTOGRAM, instances)

    def outcomes(self, statuses: Counter[int], errors: Counter[str]) -> None:
        for status, count in statuses.items():
            self._emit("HandlerResponses", MetricTypes.COUNTER, count, str(status))
        for kind, count in errors.items():
            self._emit("HandlerErrors", MetricTypes.COUNTER, count, kind)

    def device_memory(self, device: torch.device) -> None:
        if device.type == "cuda":
            allocated = torch.cuda.memory_allocated(device)
            self._emit("DeviceMemoryAllocatedBytes", MetricTypes.GAUGE, allocated, str(device))

    def _emit(self, name: str, kind: MetricTypes, value: float, *dimensions: str) -> None:
        if self._cache is None or name in self._missing:
            return
        try:
            metric = self._cache.get_metric(name, kind)
        except Exception:  # noqa: BLE001 - not declared in this server's metrics config
            self._missing.add(name)
            logger.warning("metric %s is not in the server's metrics config; not emitting it", name)
            return
        metric.add_or_update(value, [*self._model, *dimensions])
