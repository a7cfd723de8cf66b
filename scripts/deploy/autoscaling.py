"""The HPA and the Prometheus adapter rule it needs, from configs/monitoring/autoscaling.yaml.

Why the Prometheus adapter rather than KEDA: the HPA stays an object we write,
as `autoscaling/v2`, that `kubernetes-validate` checks against the cluster's own
schemas (KEDA writes its HPA at run time, so ours would live only in a
ScaledObject CRD), and the metric stays per pod (`sum by (pod)`), which an HPA
`Pods` metric averages as it is, whereas KEDA's Prometheus scaler wants a query
that returns a single value. Scale-to-zero, KEDA's main gift, is unwanted here:
a TorchServe pod takes minutes to load and warm up, and we keep at least two.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from scripts.config.files import ConfigError

AUTOSCALING = Path("configs/monitoring/autoscaling.yaml")
MIN_REPLICAS = 2
MAX_REPLICAS = 10  # a ceiling for the cluster's capacity, not derived: set it for yours
# The seed's stabilisation: scale up only on 5 minutes of pressure, by half at most per
# minute; scale down only after 10 quiet minutes, by a quarter at most per 2 minutes.
BEHAVIOR = {
    "scaleUp": {"stabilizationWindowSeconds": 300, "selectPolicy": "Max",
                "policies": [{"type": "Percent", "value": 50, "periodSeconds": 60}]},
    "scaleDown": {"stabilizationWindowSeconds": 600, "selectPolicy": "Max",
                  "policies": [{"type": "Percent", "value": 25, "periodSeconds": 120}]},
}
# The adapter's template: Go text/template with << >> delimiters (prometheus-adapter docs/config.md).
LABEL_MATCHERS, GROUP_BY = "<<.LabelMatchers>>", "<<.GroupBy>>"
SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?(?=\[)")  # a range selector: name{...}[
GROUPING = re.compile(r"\bby\s*\(([^)]*)\)")
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
                "and", "or", "unless"}


@dataclass(frozen=True)
class ScalingMetric:
    """The metric the HPA averages over pods: its API name, its per-pod PromQL, the target."""

    name: str
    query: str
    target: float


def read_metric(path: Path = AUTOSCALING) -> ScalingMetric:
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ConfigError(path, "-", "expected a mapping", "write metric:, query: and target:")
    for key, kind in (("metric", str), ("query", str), ("target", (int, float))):
        if not isinstance(raw.get(key), kind) or isinstance(raw.get(key), bool):
            raise ConfigError(path, key, f"missing or of the wrong type: {raw.get(key)!r}",
                              "see the comment at the top of the file")
    if raw["target"] <= 0:
        raise ConfigError(path, "target", f"must be positive, got {raw['target']}", "write e.g. target: 50")
    return ScalingMetric(raw["metric"], " ".join(raw["query"].split()), raw["target"])


def adapter_query(metric: ScalingMetric, path: Path = AUTOSCALING) -> str:
    """The query as the adapter's metricsQuery: every selector restricted to the pods the HPA asks
    about (<<.LabelMatchers>>: namespace and pod), grouped by what it asks (<<.GroupBy>>: pod)."""
    groupings = GROUPING.findall(metric.query)
    if not groupings or any(labels.strip() != "pod" for labels in groupings):
        raise ConfigError(path, "query", "every aggregation must be `by (pod)`, one value per pod",
                          "aggregate with sum by (pod) (...) so the HPA can average the pods")
    templated = GROUPING.sub(f"by ({GROUP_BY})", metric.query)

    def restrict(match: re.Match[str]) -> str:
        inner = match.group(3)
        return f"{match.group(1)}{{{inner + ',' if inner else ''}{LABEL_MATCHERS}}}"

    templated = SELECTOR.sub(restrict, templated)
    bare = _bare_selectors(templated)
    if bare:
        raise ConfigError(path, "query", f"selectors without a range: {bare}",
                          "give every selector a range, e.g. rate(name[1m])")
    return templated


def series_names(metric: ScalingMetric) -> list[str]:
    """The metric names the query reads, in order of appearance."""
    return list(dict.fromkeys(match.group(1) for match in SELECTOR.finditer(metric.query)))


def adapter_rule(metric: ScalingMetric) -> dict[str, Any]:
    """One rule of the adapter's config: which series to discover, how their labels map to
    Kubernetes objects, the name the custom metrics API serves, and the query behind it."""
    first = series_names(metric)[0]
    return {
        "seriesQuery": f'{first}{{namespace!="",pod!=""}}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"},
                                    "pod": {"resource": "pod"}}},
        "name": {"matches": f"^{first}$", "as": metric.name},
        "metricsQuery": adapter_query(metric),
    }


def horizontal_pod_autoscaler(metric: ScalingMetric, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": MIN_REPLICAS,
            "maxReplicas": MAX_REPLICAS,
            "metrics": [{"type": "Pods", "pods": {
                "metric": {"name": metric.name},
                "target": {"type": "AverageValue", "averageValue": _quantity(metric.target)},
            }}],
            "behavior": BEHAVIOR,
        },
    }


def adapter_config_map(metric: ScalingMetric, name: str, labels: dict[str, str]) -> dict[str, Any]:
    """The adapter's rules as a ConfigMap (mount it as the adapter's --config file)."""
    config = yaml.safe_dump({"rules": [adapter_rule(metric)]}, sort_keys=False, width=1000)
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels},
            "data": {"config.yaml": config}}


def _quantity(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _bare_selectors(templated: str) -> list[str]:
    """Names left that are neither functions, keywords, numbers nor grouping labels: selectors
    without a range, which the steps above would not have restricted to the HPA's pods."""
    text = re.sub(r"[a-zA-Z_:][a-zA-Z0-9_:]*\{[^}]*\}|\[[^\]]*\]|\bby\s*\([^)]*\)", " ", templated)
    names = re.findall(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", text)
    return [name for name in names if name not in PROMQL_WORDS]
