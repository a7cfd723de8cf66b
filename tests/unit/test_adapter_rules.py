"""The Prometheus adapter's rules (a config file inside a ConfigMap, so no Kubernetes schema covers it):
they have the adapter's shape, and the query they serve is autoscaling.yaml's, restricted to the pods
the HPA asks about."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from scripts.config.files import ConfigError
from scripts.deploy import autoscaling
from tests.prerequisites import prometheus_missing

# The adapter's config format, from kubernetes-sigs/prometheus-adapter v0.12.0 (commit 17cef51)
# pkg/config/config.go, read with yaml.UnmarshalStrict (pkg/config/loader.go): unknown keys are errors.
_STRING = {"type": "string"}
_MAPPING = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "template": _STRING,
        "overrides": {"type": "object", "additionalProperties": {
            "type": "object", "additionalProperties": False, "required": ["resource"],
            "properties": {"group": _STRING, "resource": _STRING}}},
        "namespaced": {"type": "boolean"},
    },
}
_RULE = {
    "type": "object", "additionalProperties": False, "required": ["seriesQuery"],
    "properties": {
        "seriesQuery": _STRING,
        "seriesFilters": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "properties": {"is": _STRING, "isNot": _STRING}}},
        "resources": _MAPPING,
        "name": {"type": "object", "additionalProperties": False,
                 "properties": {"matches": _STRING, "as": _STRING}},
        "metricsQuery": _STRING,
    },
}
ADAPTER_CONFIG = {
    "type": "object", "additionalProperties": False,
    "properties": {"rules": {"type": "array", "items": _RULE},
                   "externalRules": {"type": "array", "items": _RULE},
                   "resourceRules": {"type": "object"}},
}
# What the adapter substitutes for one HPA request about two pods (pkg/naming/metrics_query.go).
MATCHERS = 'namespace="serving",pod=~"torchserve-a|torchserve-b"'


def adapter_config() -> dict[str, Any]:
    (config_map,) = [doc for doc in yaml.safe_load_all(Path("deploy/kubernetes/prometheus-adapter-rules.yaml")
                                                        .read_text()) if doc]
    return yaml.safe_load(config_map["data"]["config.yaml"])


def render(template: str, series: str) -> str:
    """The adapter's Go template step for the arguments above."""
    return (template.replace("<<.Series>>", series).replace(autoscaling.LABEL_MATCHERS, MATCHERS)
            .replace(autoscaling.GROUP_BY, "pod"))


def test_the_rules_have_the_adapters_shape_and_serve_the_hpas_metric() -> None:
    config = adapter_config()
    jsonschema.validate(config, ADAPTER_CONFIG)
    (rule,) = config["rules"]
    metric = autoscaling.read_metric()
    assert rule["name"]["as"] == metric.name
    assert re.fullmatch(rule["name"]["matches"], rule["seriesQuery"].split("{")[0])
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"},
                                              "pod": {"resource": "pod"}}


def test_the_shape_check_refuses_what_the_adapter_refuses() -> None:
    config = adapter_config()
    # a typo, which the adapter's yaml.UnmarshalStrict refuses
    config["rules"][0]["metricQuery"] = config["rules"][0].pop("metricsQuery")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, ADAPTER_CONFIG)


def test_the_served_query_is_autoscaling_yamls_restricted_to_the_requested_pods() -> None:
    metric = autoscaling.read_metric()
    (rule,) = adapter_config()["rules"]
    rendered = render(rule["metricsQuery"], rule["seriesQuery"].split("{")[0])
    assert rendered.count(MATCHERS) == len(re.findall(r"\w\[", metric.query)) >= 2
    assert rendered.replace("{" + MATCHERS + "}", "") == metric.query


def test_the_rendered_query_parses_as_promql(tmp_path: Path) -> None:
    """promtool (Debian's prometheus package) parses the query as Prometheus would, as a rule."""
    promtool = shutil.which("promtool")
    if promtool is None:
        prometheus_missing("promtool is not installed (scripts/deploy/install_prometheus.sh)")
    (rule,) = adapter_config()["rules"]
    rules = tmp_path / "rules.yml"
    rendered = render(rule["metricsQuery"], "x")
    rules.write_text(yaml.safe_dump({"groups": [{"name": "hpa", "rules": [
        {"record": "pod:torchserve_queue_latency_ms", "expr": rendered}]}]}))
    result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    rules.write_text(rules.read_text().replace("sum by", "sum bye", 1))
    broken = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True,
                            check=False)
    assert broken.returncode != 0


@pytest.mark.parametrize(("query", "problem"), [
    ("sum(rate(ts_inference_requests_total[1m]))", "by (pod)"),
    ("sum by (pod, model_name) (rate(ts_inference_requests_total[1m]))", "by (pod)"),
    ("sum by (pod) (rate(ts_inference_requests_total[1m])) / ts_queue_latency_microseconds",
     "without a range"),
])
def test_a_query_the_adapter_could_not_serve_per_pod_is_refused(query: str, problem: str) -> None:
    metric = dataclasses.replace(autoscaling.read_metric(), query=query)
    with pytest.raises(ConfigError) as caught:
        autoscaling.adapter_query(metric)
    assert problem in str(caught.value) and caught.value.key == "query"


def test_existing_matchers_are_kept_and_the_ones_for_the_pods_added() -> None:
    metric = dataclasses.replace(autoscaling.read_metric(),
                                 query='sum by (pod) (rate(ts_inference_requests_total{model_name="x"}[1m]))')
    assert autoscaling.adapter_query(metric) == (
        'sum by (<<.GroupBy>>) (rate(ts_inference_requests_total{model_name="x",<<.LabelMatchers>>}[1m]))')
