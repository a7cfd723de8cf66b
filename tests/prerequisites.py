"""What a test needs from the machine but cannot install itself: missing, it skips on a laptop and
fails where the environment requires it (.ci/run exports REQUIRE_PROMETHEUS=1), so CI never skips
it unnoticed."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NoReturn

import pytest

REQUIRE_PROMETHEUS = "REQUIRE_PROMETHEUS"


def prometheus_missing(reason: str, environ: Mapping[str, str] = os.environ) -> NoReturn:
    """Skip with `reason`, or fail with it when REQUIRE_PROMETHEUS=1."""
    if environ.get(REQUIRE_PROMETHEUS) == "1":
        pytest.fail(f"{reason} ({REQUIRE_PROMETHEUS}=1: required here)")
    pytest.skip(reason)
