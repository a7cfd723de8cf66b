"""Every Grafana panel's PromQL and the autoscaler's query, asked of a real Prometheus.

A real Prometheus (Debian's 2.42, installed by scripts/deploy/install_prometheus.sh)
runs configs/monitoring/prometheus.yml, with the target rewritten to a private
TorchServe's metrics port. The target also gets the `namespace` and `pod` labels that
Kubernetes pod discovery attaches, because the autoscaler's query groups by pod. It scrapes
every second rather than the shipped 5 s: the test waits for scrapes, and the tolerances
below hold at any interval.
The test sends a known load: good requests of one and of four rows, and malformed
ones of three kinds. Each query must return series whose values agree with what was
sent, or with TorchServe's own counters where only the server knows the value
(latencies).

Rates are checked within scrape tolerance, derived from Prometheus's extrapolation
rule rather than guessed. The queries are evaluated at the first sample after the
load, and the sample before it lies inside the [1m] window. Then `rate(c[1m]) * 60`
lies between the counter's increase and the increase plus its value before the
load: Prometheus extrapolates toward the window's start by at most the time the
counter would take to fall to zero. A ratio of two rates lies between the ratio of
the increases divided by the denominator's bound and times the numerator's.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import torch
import yaml

from scripts.build import datasets
from scripts.client.prometheus import Sample, increase, total
from scripts.deploy.autoscaling import GROUP_BY, LABEL_MATCHERS, adapter_rule, read_metric
from scripts.deploy.monitor import INSTALL, SCRAPE_CONFIG, Prometheus
from scripts.serve.local import LocalServer, free_port
from tests.prerequisites import prometheus_missing

pytestmark = pytest.mark.e2e
MONITORING = Path("configs/monitoring")
POD = {"namespace": "toolkit-test", "pod": "torchserve-0"}
WINDOW = 60.0      # the [1m] of every query
SLACK = 1e-6      # floating point only

GOOD, MULTI, ROWS = 96, 8, 4                        # single-row requests; requests of ROWS rows
MALFORMED = {                                       # (body, content type, status, error kind, count)
    "broken json": (b"{broken", "application/json", 400, "InvalidInput", 6),
    "wrong length": (b'{"features": [1, 2]}', "application/json", 400, "InvalidInput", 3),
    "text/plain": (b"hello", "text/plain", 415, "UnsupportedMediaType", 5),
    "too many rows": (None, "application/json", 413, "PayloadTooLarge", 4),  # 257 rows; the limit is 256
}


@dataclass(frozen=True)
class Load:
    """What the test sent and what TorchServe's own exposition says about it, scraped directly."""

    statuses: Counter[str]
    kinds: Counter[str]
    requests: int
    client_mean_us: float
    before: list[Sample]
    after: list[Sample]

    def grew(self, name: str, **labels: str) -> float:
        return increase(self.before, self.after, name, **labels)

    def mean(self, numerator: str, denominator: str, **labels: str) -> float:
        return self.grew(numerator, **labels) / self.grew(denominator, **labels)

    def stretch(self, name: str, **labels: str) -> float:
        """The most `rate` can extrapolate this counter's increase by: 1 + value before / increase."""
        return 1 + total(self.before, name, **labels) / self.grew(name, **labels)

    def per_second(self, name: str, **labels: str) -> tuple[float, float]:
        """The range `rate(name[1m])` must fall in, evaluated at the sample after the load."""
        grew = self.grew(name, **labels)
        return grew / WINDOW * (1 - SLACK), grew * self.stretch(name, **labels) / WINDOW * (1 + SLACK)

    def ratio(self, numerator: str, denominator: str, **labels: str) -> tuple[float, float]:
        """The range `rate(numerator[1m]) / rate(denominator[1m])` must fall in."""
        mean = self.mean(numerator, denominator, **labels)
        return (mean / self.stretch(denominator, **labels) * (1 - SLACK),
                mean * self.stretch(numerator, **labels) * (1 + SLACK))


SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def exposition(metrics_url: str) -> list[Sample]:
    """TorchServe's samples under the names Prometheus stores. (prometheus-client's parser would
    add _total to a counter named without it, as ts_inference_latency_microseconds is.)"""
    text = requests.get(f"{metrics_url}/metrics", timeout=10).text
    matches = (SAMPLE.match(line) for line in text.splitlines() if line and not line.startswith("#"))
    return [Sample(m[1], dict(LABEL.findall(m[2] or "")), float(m[3])) for m in matches if m]


@pytest.fixture(scope="module")
def prometheus_binary() -> None:
    """The same helper `make test`, `make monitor` and .ci/run use; a skip names what is missing."""
    done = subprocess.run(["bash", INSTALL, "--if-possible"], capture_output=True, text=True, check=False)
    if done.returncode != 0 or "==> prometheus, version" not in done.stdout:
        prometheus_missing(f"no prometheus and it cannot be installed here: {done.stderr.strip()}")


@pytest.fixture(scope="module")
def stack(prometheus_binary: None, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[LocalServer, Prometheus]]:
    tmp = tmp_path_factory.mktemp("monitoring")
    (tmp / "prometheus").mkdir()
    shipped = yaml.safe_load(SCRAPE_CONFIG.read_text())
    shipped["global"]["scrape_interval"] = "1s"
    source = tmp / "prometheus-1s.yml"
    source.write_text(yaml.safe_dump(shipped, sort_keys=False))
    with LocalServer.start(tmp / "server", Path("model_store").resolve(), ["tabular"]) as server, \
            Prometheus.start(tmp / "prometheus", server.metrics_url, free_port(), source=source,
                             labels=POD) as prometheus:
        prometheus.wait_scraped()
        yield server, prometheus


def requests_to_send() -> list[tuple[bytes, str, str, str | None]]:
    """(body, content type, expected status, expected error kind) for every request of the load."""
    rows = datasets.breast_cancer().held_out_x.tolist()
    sent = [(json.dumps({"features": row}).encode(), "application/json", "200", None) for row in rows[:GOOD]]
    sent += [(json.dumps({"features": rows[i:i + ROWS]}).encode(), "application/json", "200", None)
             for i in range(MULTI)]
    for body, content_type, status, kind, count in MALFORMED.values():
        body = body or json.dumps({"features": [rows[0]] * 257}).encode()
        sent += [(body, content_type, str(status), kind)] * count
    return sent


def send(server: LocalServer, load: list[tuple[bytes, str, str, str | None]]) -> list[tuple[int, float]]:
    """Every request, 16 at a time (so the frontend batches); (status, seconds) each."""
    def post(item: tuple[bytes, str, str, str | None]) -> tuple[int, float]:
        started = time.perf_counter()
        response = requests.post(f"{server.inference_url}/predictions/tabular", data=item[0],
                                 headers={"Content-Type": item[1]}, timeout=60)
        return response.status_code, time.perf_counter() - started

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(post, load))


def latest(prometheus: Prometheus, expr: str) -> dict[str, float]:
    """The newest sample of each series of `expr`, keyed by its labels as text."""
    return {json.dumps(item["metric"], sort_keys=True): float(item["value"][1])
            for item in prometheus.query(expr)}


def settle(prometheus: Prometheus, want: dict[str, float], timeout: float = 60) -> float:
    """Wait until Prometheus's newest samples show `want` (expr -> summed value); the sample time."""
    deadline = time.monotonic() + timeout
    while True:
        seen = {expr: sum(latest(prometheus, expr).values()) for expr in want}
        if seen == want:
            stamps = prometheus.query('timestamp(ts_inference_requests_total{model_name="tabular"})')
            return float(stamps[0]["value"][1])
        assert time.monotonic() < deadline, f"Prometheus never showed {want}; last {seen}"
        time.sleep(0.5)


def counters(statuses: Counter[str], kinds: Counter[str], requests_sent: int) -> dict[str, float]:
    want = {f'sum(HandlerResponses_total{{ModelName="tabular",Status="{s}"}})': float(n)
            for s, n in statuses.items()}
    want |= {f'sum(HandlerErrors_total{{ModelName="tabular",Kind="{k}"}})': float(n)
             for k, n in kinds.items()}
    want['sum(ts_inference_requests_total{model_name="tabular"})'] = float(requests_sent)
    return want


@pytest.fixture(scope="module")
def load(stack: tuple[LocalServer, Prometheus]) -> tuple[Load, float]:
    """A warm-up (so every series exists before the load: Prometheus sees a counter's increase only
    from its first sample on), then the load; returns it with the time of the sample after it."""
    server, prometheus = stack
    planned = requests_to_send()
    warm_up = [planned[0], *{item[3]: item for item in planned if item[3]}.values()]  # one of each kind
    assert [status for status, _ in send(server, warm_up)] == [int(item[2]) for item in warm_up]
    warm_statuses = Counter(item[2] for item in warm_up)
    warm_kinds = Counter(item[3] for item in warm_up if item[3])
    before_at = settle(prometheus, counters(warm_statuses, warm_kinds, len(warm_up)))
    before = exposition(server.metrics_url)

    answered = send(server, planned)
    assert [status for status, _ in answered] == [int(item[2]) for item in planned]
    statuses, kinds = Counter(item[2] for item in planned), Counter(item[3] for item in planned if item[3])
    after_at = settle(prometheus, counters(warm_statuses + statuses, warm_kinds + kinds,
                                           len(warm_up) + len(planned)))
    after = exposition(server.metrics_url)
    assert after_at - before_at < WINDOW - 5, (
        f"the load took {after_at - before_at:.0f}s between samples: the queries' [1m] window cannot "
        "hold all of it on this machine")
    mean_us = sum(seconds for _, seconds in answered) / len(answered) * 1e6
    return Load(statuses, kinds, len(planned), mean_us, before, after), after_at


# ---- what each panel must show after the load --------------------------------------------------

Series = list[dict[str, Any]]


def per(result: Series, label: str) -> dict[str, float]:
    values = {item["metric"].get(label, ""): float(item["value"][1]) for item in result}
    assert len(values) == len(result), f"several series share one {label}: {result}"
    return values


def within(value: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] <= value <= bounds[1]


def check_rates(result: Series, load: Load, name: str, label: str, sent: Counter[str]) -> None:
    """One series per `label` value, as many as sent, each at the rate of what was sent."""
    shown = per(result, label)
    assert shown.keys() == sent.keys(), (shown, sent)
    for key, count in sent.items():
        assert load.grew(name, ModelName="tabular", **{label: key}) == count  # the server counted it all
        bounds = load.per_second(name, ModelName="tabular", **{label: key})
        assert within(shown[key], bounds), (key, shown[key], bounds)


def check_ratio(result: Series, label: str, bounds: tuple[float, float]) -> None:
    shown = per(result, label)
    assert shown.keys() == {"tabular"} and within(shown["tabular"], bounds), (shown, bounds)


def expectations(load: Load) -> dict[tuple[str, str], Callable[[Series], None]]:
    """(panel title, refId) -> the check of its result. A panel without an entry fails the test."""
    tabular = {"ModelName": "tabular"}
    frontend = {"model_name": "tabular"}
    # what reached the forward pass: every good request and each of its rows
    assert load.grew("BatchRequests_sum", **tabular) == GOOD + MULTI
    assert load.grew("BatchInstances_sum", **tabular) == GOOD + MULTI * ROWS
    assert load.grew("ts_inference_requests_total", **frontend) == load.requests
    # the frontend's latency counter is in microseconds: a mean below what clients saw, same order
    latency_us = load.mean("ts_inference_latency_microseconds", "ts_inference_requests_total", **frontend)
    assert 0.1 * load.client_mean_us < latency_us <= load.client_mean_us, (latency_us, load.client_mean_us)

    def stages(result: Series) -> None:
        shown = per(result, "Stage")
        assert shown.keys() == {"preprocess", "collate", "inference", "postprocess", "serialize"}, shown
        for stage, seconds in shown.items():
            bounds = load.ratio("HandlerStageSeconds_sum", "HandlerStageSeconds_count", Stage=stage,
                                **tabular)
            assert within(seconds, bounds), (stage, seconds, bounds)

    def device_memory(result: Series) -> None:
        # emitted by handlers/metrics.py for CUDA devices only: no series can exist on a CPU machine
        assert bool(result) == torch.cuda.is_available(), result

    per_batch = "Mean requests and instances per forward pass"
    frontend_latency = "Mean end-to-end latency and queue time (frontend)"
    return {
        ("Responses per second by status", "A"):
            lambda r: check_rates(r, load, "HandlerResponses_total", "Status", load.statuses),
        ("Failed requests per second by kind", "A"):
            lambda r: check_rates(r, load, "HandlerErrors_total", "Kind", load.kinds),
        (per_batch, "A"): lambda r: check_ratio(
            r, "ModelName", load.ratio("BatchRequests_sum", "BatchRequests_count", **tabular)),
        (per_batch, "B"): lambda r: check_ratio(
            r, "ModelName", load.ratio("BatchInstances_sum", "BatchInstances_count", **tabular)),
        ("Mean handler stage time per batch", "A"): stages,
        (frontend_latency, "A"): lambda r: check_ratio(r, "model_name", load.ratio(
            "ts_inference_latency_microseconds", "ts_inference_requests_total", **frontend)),
        (frontend_latency, "B"): lambda r: check_ratio(r, "model_name", load.ratio(
            "ts_queue_latency_microseconds", "ts_inference_requests_total", **frontend)),
        ("Device memory held by tensors (GPU workers)", "A"): device_memory,
    }


def dashboard_queries(model: str) -> list[tuple[str, str, str, str]]:
    """(title, refId, legendFormat, expr) of every panel target, with Grafana's $model substituted as
    Grafana does for one selected value. Any other variable fails here, to be added on purpose."""
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("${model}", model).replace("$model", model)
            assert "$" not in expr, f"{panel['title']}: a template variable this test does not know: {expr}"
            found.append((panel["title"], target["refId"], target.get("legendFormat", ""), expr))
    return found


def test_every_dashboard_query_returns_what_the_load_put_there(stack: tuple[LocalServer, Prometheus],
                                                              load: tuple[Load, float]) -> None:
    _, prometheus = stack
    sent, at = load
    checks = expectations(sent)
    queries = dashboard_queries("tabular")
    assert {(title, ref) for title, ref, _, _ in queries} == set(checks), "a panel without a check"
    for title, ref, legend, expr in queries:
        result = prometheus.query(expr, at=at)
        try:
            checks[(title, ref)](result)
            for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):  # the legend's labels exist
                assert all(label in item["metric"] for item in result), f"no {label} label in {result}"
        except AssertionError as error:
            raise AssertionError(f"panel {title!r} {ref}: {expr}\n  {error}") from None


def test_the_model_variable_lists_the_served_models(stack: tuple[LocalServer, Prometheus],
                                                    load: tuple[Load, float]) -> None:
    """Grafana's label_values(METRIC, LABEL) is Prometheus's label values API with a match[]."""
    _, prometheus = stack
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    variable = next(v["query"] for v in dashboard["templating"]["list"] if v["name"] == "model")
    metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable).groups()  # type: ignore[union-attr]
    answer = requests.get(f"{prometheus.url}/api/v1/label/{label}/values", params={"match[]": metric},
                          timeout=10).json()
    assert answer["status"] == "success" and answer["data"] == ["tabular"], answer


def test_the_autoscaler_query_gives_one_value_per_pod_the_mean_queue_wait(
        stack: tuple[LocalServer, Prometheus], load: tuple[Load, float]) -> None:
    _, prometheus = stack
    sent, at = load
    scaling = yaml.safe_load((MONITORING / "autoscaling.yaml").read_text())
    result = prometheus.query(scaling["query"], at=at)
    assert [item["metric"] for item in result] == [{"pod": POD["pod"]}], result
    low, high = sent.ratio("ts_queue_latency_microseconds", "ts_inference_requests_total",
                           model_name="tabular")
    queue_ms = float(result[0]["value"][1])
    assert within(queue_ms, (low / 1000, high / 1000)), (queue_ms, low / 1000, high / 1000)

    # The Prometheus adapter's rule (deploy/kubernetes/) as the adapter runs it for an HPA over this
    # pod: its series query discovers the pod, its metrics query gives the same value.
    rule = adapter_rule(read_metric())
    assert prometheus.query(rule["seriesQuery"], at=at), rule["seriesQuery"]
    matchers = f'namespace="{POD["namespace"]}",pod=~"{POD["pod"]}"'
    asked = rule["metricsQuery"].replace(LABEL_MATCHERS, matchers).replace(GROUP_BY, "pod")
    assert prometheus.query(asked, at=at) == result, asked
