"""The shipped Prometheus and Grafana configs refer only to metrics the server exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

MONITORING = Path("configs/monitoring")


def declared_metrics() -> set[str]:
    config = yaml.safe_load(Path("configs/metrics.yaml").read_text())
    return {metric["name"] for section in ("ts_metrics", "model_metrics")
            for metrics in config[section].values() for metric in metrics}


def test_every_dashboard_query_uses_declared_metrics() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for expr in expressions for name in re.findall(r"\b([A-Za-z_]+)\{", expr)}
    declared = declared_metrics()
    # Prometheus adds _bucket/_sum/_count to histograms and _total to counters.
    unknown = {name for name in used
               if name not in declared and re.sub(r"_(bucket|sum|count|total)$", "", name) not in declared}
    assert used and not unknown, unknown


def test_every_handler_metric_is_declared() -> None:
    source = Path("handlers/metrics.py").read_text()
    emitted = set(re.findall(r'_add\(\s*"(\w+)"', source))
    assert emitted == {"HandlerStageSeconds", "BatchRequests", "BatchInstances", "HandlerResponses",
                       "HandlerErrors", "DeviceMemoryAllocatedBytes"}
    assert emitted <= declared_metrics()


def test_prometheus_scrapes_the_metrics_port_of_the_properties() -> None:
    scrape = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    for properties in ("configs/local.properties", "configs/production.properties"):
        text = Path(properties).read_text()
        address = re.search(r"^metrics_address=http://(\S+)$", text, re.M)
        assert address is not None and targets == [address[1]]
        assert "metrics_config=configs/metrics.yaml" in text
