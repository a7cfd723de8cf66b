"""A model's config with some handler options changed, and where a measuring command leaves results.

    option_overrides("backend=torch,quantize=int8") -> {"backend": "torch", "quantize": "int8"}

Values are read as YAML, so `compile=true` is a bool and `threads=1` an int.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import yaml

from scripts.config.model import ModelSpec


def option_overrides(text: str) -> dict[str, Any]:
    """`backend=torch,quantize=int8` -> {"backend": "torch", "quantize": "int8"} (values as YAML)."""
    pairs = [item.split("=", 1) for item in text.split(",") if item]
    if not pairs or any(len(pair) != 2 or not pair[0] for pair in pairs):
        raise ValueError(f"--options {text!r}: expected key=value[,key=value...]")
    return {key.strip(): yaml.safe_load(value) for key, value in pairs}


def option_specs(spec: ModelSpec, options: tuple[str, ...]) -> dict[str, ModelSpec]:
    """One spec per --options argument: the model renamed, its handler options overridden."""
    specs = {}
    for number, text in enumerate(options, start=1):
        config = dict(spec.model_config)
        config["handler"] = {**config.get("handler", {}), **option_overrides(text)}
        specs[f"ours+{text}"] = dataclasses.replace(spec, name=f"{spec.name}_opt{number}",
                                                    model_config=config)
    return specs


def save_results(out: Path, data: Any, report: str, started: float) -> None:
    """Write both files into `out`, print the report and how long the run took."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / "report.md").write_text(report)
    print(report)
    print(f"wrote {out}/ in {time.monotonic() - started:.0f}s")
