"""Which engine runs each live worker, from the HandlerEngine metric every worker emits at start.

A worker says once, at the end of `initialize()`, what runs its model (handlers/placement.py:
`torch on cuda:0`, `onnxruntime CPUExecutionProvider on cpu`), as a gauge labelled with its pid.
TorchServe keeps a gauge's last value for every label set it has seen, so a worker that was
replaced still has its line: the describe answer's live worker pids pick the current ones.
"""

from __future__ import annotations

from typing import Any

import requests

from scripts.client.prometheus import scrape


def engines_by_worker(metrics_url: str) -> dict[tuple[str, str, int], str]:
    """(model, version, worker pid) -> engine label; empty when the metrics port does not answer."""
    try:
        samples = scrape(metrics_url, timeout=5)
    except (requests.RequestException, ValueError):
        return {}
    found = {}
    for sample in samples:
        if sample.name != "HandlerEngine":
            continue
        labels = sample.labels
        try:
            key = (labels["ModelName"], labels["ModelVersion"], int(labels["WorkerPid"]))
        except (KeyError, ValueError):
            continue
        found[key] = labels.get("Engine", "?")
    return found


def with_engines(states: dict[str, dict[str, Any]],
                 engines: dict[tuple[str, str, int], str]) -> dict[str, dict[str, Any]]:
    """tsctl status's states with `engines` ({worker id: engine label}) added to each version."""
    for model, state in states.items():
        for version, entry in state["versions"].items():
            entry["engines"] = {str(worker.get("id")): engines[(model, version, worker["pid"])]
                                for worker in entry.get("workers", [])
                                if (model, version, worker.get("pid")) in engines}
    return states
