"""The arithmetic behind `make bench`, `make tune` and `make bench-check` (no servers)."""

from __future__ import annotations

from scripts.measure.bench import median_result, ratios
from scripts.measure.bench_check import regressions
from scripts.measure.loadgen import LoadResult
from scripts.measure.tune import best, recommendation_yaml


def result(throughput: float, p99: float = 10.0, batch: float | None = None) -> LoadResult:
    return LoadResult(requests=100, failures=0, throughput=throughput, p50_ms=5, p95_ms=8, p99_ms=p99,
                      locust_cpu=0.1, mean_batch=batch)


def test_median_result_takes_each_figure_median_and_sums_errors() -> None:
    figures = median_result([result(100, 30, 4.0), result(300, 10, 8.0), result(200, 20, 6.0)])
    assert figures["throughput"] == 200 and figures["p99_ms"] == 20 and figures["mean_batch"] == 6.0
    assert figures["requests"] == 300 and figures["rounds_throughput"] == [100, 300, 200]


def test_ratios_use_the_highest_concurrency() -> None:
    rows = [{"variant": "ours", "concurrency": 1, "throughput": 10},
            {"variant": "ours", "concurrency": 32, "throughput": 90},
            {"variant": "unbatched", "concurrency": 32, "throughput": 30},
            {"variant": "plain", "concurrency": 32, "throughput": 100}]
    found = ratios(rows, {"instances_per_second": 100.0})
    assert found == {"ours_over_limit": 0.9, "ours_over_unbatched": 3.0, "ours_over_plain": 0.9}


def test_regressions_flag_only_drops_beyond_the_tolerance() -> None:
    baseline = {"tolerance": 0.2, "ratios": {"a": 1.0, "b": 2.0, "c": 0.5}}
    problems = regressions(baseline, {"a": 0.81, "b": 1.5})
    assert problems == ["b: 1.500 is more than 20% below the baseline 2.000", "c: not measured"]


def test_tune_picks_the_fastest_config_within_budget_and_without_errors() -> None:
    keys = ("batch_size", "max_batch_delay", "workers", "throughput", "p99_ms", "failures")
    rows = [dict(zip(keys, values, strict=True)) for values in (
        (16, 50, 1, 500, 400, 0),  # fastest, but over budget
        (8, 20, 1, 300, 150, 0),   # the answer
        (8, 5, 2, 350, 120, 3),    # within budget, but with errors
        (1, 5, 1, 100, 90, 0),
    )]
    chosen = best(rows, budget_ms=200)
    assert chosen is not None and (chosen["batch_size"], chosen["max_batch_delay"]) == (8, 20)
    assert best(rows, budget_ms=50) is None
    text = recommendation_yaml("minilm", chosen, 200, 32)
    assert "batchSize: 8\n  maxBatchDelay: 20\n  minWorkers: 1\n  maxWorkers: 1" in text
