"""New versions of tabular for rollout, gate and startup tests, built by the real archive step."""

from __future__ import annotations

from pathlib import Path

from scripts.build import archive
from scripts.build.store import read_archive
from tests.conftest import ROOT

TABULAR_YAML = ROOT / "configs/models/tabular.yaml"


def tabular_version(workdir: Path, store: Path, version: str, swap_labels: bool = False) -> Path:
    """`make archive` of tabular at `version` into `store` (its top and .versions/); returns the YAML it
    was built from. swap_labels: its class names swapped, a model that is wrong on purpose."""
    shipped = TABULAR_YAML.read_text()
    text = shipped.replace('version: "1.0"', f'version: "{version}"')
    assert text != shipped, "tabular.yaml's version line changed: update this replacement"
    if swap_labels:
        swapped = text.replace("class_names: [malignant, benign]", "class_names: [benign, malignant]")
        assert swapped != text, "tabular.yaml's class_names changed: update this swap"
        text = swapped
    config = workdir / f"tabular-{version}{'-swapped' if swap_labels else ''}.yaml"
    config.write_text(text)
    assert archive.main([str(config), "--store", str(store)]) == 0
    assert read_archive(store / "tabular.mar").version == version
    return config
