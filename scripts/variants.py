"""A model's config with some handler options changed: how benchmarks compare one option's effect.

    option_overrides("backend=torch,quantize=int8") -> {"backend": "torch", "quantize": "int8"}

Values are read as YAML, so `compile=true` is a bool and `threads=1` an int.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml

from scripts.model_config import ModelSpec


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
