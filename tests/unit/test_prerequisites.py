"""The switch that turns a missing Prometheus from a skip (a laptop) into a failure (CI)."""

from __future__ import annotations

import pytest

from tests.prerequisites import REQUIRE_PROMETHEUS, prometheus_missing


def test_missing_prometheus_skips_with_the_reason_by_default() -> None:
    with pytest.raises(pytest.skip.Exception, match="no promtool"):
        prometheus_missing("no promtool", environ={REQUIRE_PROMETHEUS: "0"})


def test_missing_prometheus_fails_where_it_is_required() -> None:
    with pytest.raises(pytest.fail.Exception, match=f"no promtool .{REQUIRE_PROMETHEUS}=1"):
        prometheus_missing("no promtool", environ={REQUIRE_PROMETHEUS: "1"})
