"""Shared test setup: run from the repository root, where the configs' relative paths point."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.chdir(ROOT)


@pytest.fixture(scope="session", autouse=True)
def built_models() -> None:
    """The example weights come from `make models`; say so rather than fail obscurely."""
    missing = [p for p in ("build/weights/tabular/tabular.safetensors",
                           "build/weights/digits/digits.safetensors",
                           "build/weights/minilm/model.safetensors") if not Path(p).exists()]
    if missing:
        pytest.fail(f"missing {missing}: run `make models` (or `make test`, which builds them)")
