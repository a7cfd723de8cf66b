"""Read TorchServe's Prometheus metrics endpoint (GET :8082/metrics) into samples.

Used by the end-to-end tests and the benchmark (mean batch size from our
BatchRequests histogram). Parsing is prometheus-client's own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import requests
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def scrape(metrics_url: str, timeout: float = 10.0) -> list[Sample]:
    """Every sample the server exports now (histograms as _bucket, _sum and _count samples)."""
    response = requests.get(f"{metrics_url}/metrics", timeout=timeout)
    response.raise_for_status()
    return parse_samples(response.text)


def settled_scrape(metrics_url: str, done: Callable[[list[Sample]], bool],
                   timeout: float = 15) -> list[Sample]:
    """Scrape until `done` holds, or `timeout` passes: then the last scrape, for the caller to say what
    is missing. Workers' metrics reach the frontend through their log stream, a little after the
    responses, so a reader polls rather than sleeps."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(metrics_url)
        if done(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


def parse_samples(text: str) -> list[Sample]:
    """The samples of a Prometheus text exposition."""
    return [
        Sample(sample.name, dict(sample.labels), float(sample.value))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def total(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of every sample called `name` whose labels include `labels` (0 if none)."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def increase(before: list[Sample], after: list[Sample], name: str, **labels: str) -> float:
    """How much `name` (summed over the series whose labels include `labels`) grew between two scrapes."""
    return total(after, name, **labels) - total(before, name, **labels)


def histogram_mean(before: list[Sample], after: list[Sample], name: str, **labels: str) -> float | None:
    """The mean of the values observed into histogram `name` between two scrapes."""
    count = increase(before, after, f"{name}_count", **labels)
    if count <= 0:
        return None
    return increase(before, after, f"{name}_sum", **labels) / count
