"""The shipped Prometheus and Grafana configs refer only to metrics the server exports."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from handlers.metrics import _DECLARED as _DECLARED_TYPES

MONITORING = Path("configs/monitoring")


def declared_metrics() -> dict[str, str]:
    """Metric name -> type (counter, gauge, histogram), from configs/metrics.yaml."""
    config = yaml.safe_load(Path("configs/metrics.yaml").read_text())
    return {metric["name"]: kind for section in ("ts_metrics", "model_metrics")
            for kind, metrics in config[section].items() for metric in metrics}


def test_every_dashboard_query_uses_exported_names() -> None:
    """TorchServe exports counters and gauges under their declared names exactly (no _total is
    added) and histograms as NAME_bucket, NAME_sum and NAME_count."""
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    variable = next(v["query"] for v in dashboard["templating"]["list"] if v["name"] == "model")
    used = {name for expr in expressions for name in re.findall(r"\b([A-Za-z_]+)(?=[{\[])", expr)}
    used |= set(re.findall(r"label_values\((\w+),", variable))
    declared = declared_metrics()

    def exported(name: str) -> bool:
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        return declared.get(name) in ("counter", "gauge") or declared.get(base) == "histogram"

    assert used and all(exported(name) for name in used), [n for n in used if not exported(n)]


def test_every_handler_metric_is_declared_with_its_type() -> None:
    from handlers.metrics import _DECLARED

    declared = declared_metrics()
    assert {name: kind.value for name, kind in _DECLARED.items()} == {
        name: declared[name] for name in _DECLARED}
    source = Path("handlers/metrics.py").read_text()
    assert set(re.findall(r'_add\(\s*"(\w+)"', source)) == set(_DECLARED)


# The frontend's pattern for a metric line (org.pytorch.serve.metrics.Metric), and how it
# splits the dimensions: at "," between dimensions and at ":" between name and value.
FRONTEND_LINE = re.compile(
    r"\s*([\w\s]+)\.([\w\s]+):([0-9\-,.e]+)\|#([^|]*)(\|#type:([^|,]+))?\|#hostname:([^,]+),([^,]+)(,(.*))?")


def test_metric_lines_parse_as_the_frontend_parses_them(caplog: pytest.LogCaptureFixture) -> None:
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

    from handlers.metrics import HandlerMetrics

    cache = MetricsCacheYamlImpl(config_file_path="configs/metrics.yaml")
    cache.initialize_cache()
    context = type("Context", (), {"metrics": cache, "model_name": "m:odel,x",
                                   "manifest": {"model": {"modelVersion": "1.0"}}})()
    metrics = HandlerMetrics(context)
    with metrics.stage("preprocess"):
        pass
    metrics.batch(3, 5)
    metrics.outcomes(Counter({200: 2, 400: 1}), Counter({"InvalidInput": 1}))
    caplog.set_level(logging.INFO, logger="ts.metrics")
    metrics.flush()
    lines = caplog.records[-1].getMessage().splitlines()
    assert len(lines) == 6
    for line in lines:
        match = FRONTEND_LINE.fullmatch(line.removeprefix("[METRICS]"))
        assert match is not None, line
        name, dimensions = match[1], match[4].split(",")
        pairs = [dimension.split(":") for dimension in dimensions]
        assert all(len(pair) == 2 for pair in pairs), line  # the frontend drops malformed pairs
        assert len(pairs) == len(cache.get_metric(name, _DECLARED_TYPES[name]).dimension_names)


def test_prometheus_scrapes_the_metrics_port_of_the_properties() -> None:
    scrape = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    for properties in ("configs/local.properties", "configs/production.properties"):
        text = Path(properties).read_text()
        address = re.search(r"^metrics_address=http://(\S+)$", text, re.M)
        assert address is not None and targets == [address[1]]
        assert "metrics_config=configs/metrics.yaml" in text
