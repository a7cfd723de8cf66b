"""Shared test setup: run from the repository root, where the configs' relative paths point."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIGURES: dict[str, str] = {}  # measured figures (e2e and image tests), printed at the end of the run
os.chdir(ROOT)


@pytest.fixture(scope="session", autouse=True)
def built_models() -> None:
    """The example weights come from `make models`; say so rather than fail obscurely."""
    missing = [p for p in ("build/weights/tabular/tabular.safetensors",
                           "build/weights/digits/digits.safetensors",
                           "build/weights/minilm/model.safetensors") if not Path(p).exists()]
    if missing:
        pytest.fail(f"missing {missing}: run `make models` (or `make test`, which builds them)")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("measured figures")
        for name, value in FIGURES.items():
            terminalreporter.write_line(f"{name}: {value}")
