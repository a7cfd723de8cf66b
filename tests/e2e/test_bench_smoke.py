"""`make bench` and `make tune` end to end, in miniature: the pipeline works and reports.

Nothing here asserts speed (that is what `make bench` and `make bench-check` are for);
it checks that every figure is produced, no request failed, and the files are written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from scripts.measure import bench, tune

pytestmark = pytest.mark.e2e


def test_bench_reports_every_variant(tmp_path: Path) -> None:
    variants = ("ours", "unbatched", "plain", "fastapi", "litserve", "limit")
    settings = bench.Settings(model="tabular", concurrency=(4,), duration=2, warmup=0, jvm_warmup=0,
                              rounds=1, variants=variants,
                              out=tmp_path / "tabular")
    report = bench.run(settings)
    bench.write_report(report, settings.out)
    runs = {row["variant"]: row for row in report["runs"]}
    assert set(runs) == {"ours", "unbatched", "plain", "fastapi", "litserve"}
    assert all(row["requests"] > 0 and row["failures"] == 0 for row in runs.values())
    assert runs["ours"]["mean_batch"] is not None and runs["unbatched"]["mean_batch"] == 1.0
    assert report["limit"]["instances_per_second"] > 0
    assert set(report["ratios"]) == {"ours_over_limit", "ours_over_unbatched", "ours_over_plain",
                                     "ours_over_fastapi", "ours_over_litserve"}
    written = {path.name for path in settings.out.iterdir()}
    assert written == {"report.md", "results.json", "throughput.png", "p99.png"}
    assert json.loads((settings.out / "results.json").read_text())["model"] == "tabular"


def test_tune_writes_a_recommendation(tmp_path: Path) -> None:
    code = tune.main(["--model", "tabular", "--p99-budget-ms", "10000", "--concurrency", "1", "4",
                      "--batch-sizes", "1", "4", "--delays", "5", "--workers", "1", "--duration", "2",
                      "--warmup", "0", "--rounds", "1", "--out", str(tmp_path)])
    assert code == 0
    recommendation = yaml.safe_load((tmp_path / "tabular" / "recommendation.yaml").read_text())
    assert recommendation["model_config"]["batchSize"] in (1, 4)
    rows = json.loads((tmp_path / "tabular" / "sweep.json").read_text())["rows"]
    assert [row["label"] for row in rows] == ["1 / 0 ms / 1w", "4 / 5 ms / 1w"]
    for row in rows:  # every setting measured at both loads, and scored by its worse ratio
        assert set(row["cells"]) == {"1", "4"} and all(c["throughput"] > 0 for c in row["cells"].values())
        assert row["score"] == min(row["ratios"].values()) <= 1.0
    assert max(row["score"] for row in rows) > 0
