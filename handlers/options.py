"""Handler options: the `handler:` section of a model-config, parsed once into a frozen dataclass.

A field's bounds are declared with its default, and checked when it is built:

    max_instances: int = option(256, low=1)
    class_names: tuple[str, ...] = option(("malignant", "benign"), length=2)

Both the archive step (fail fast, before anything is written) and the worker
(`initialize`) parse with the same function, so a config that archives is a
config that loads.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class OptionsError(ValueError):
    """A bad handler option; `key` names it and the message says what to write instead."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"handler option '{key}': {message}")
        self.key = key


def parse_options(options_type: type[T], raw: Mapping[str, Any] | None) -> T:
    """Build `options_type` from `raw`, rejecting unknown keys and wrong types."""
    raw = raw or {}
    if not isinstance(raw, Mapping):
        raise OptionsError("handler", f"expected a mapping of option names to values, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(options_type)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields)) or "none"
        raise OptionsError(unknown[0], f"unknown option; known options: {known}")
    hints = typing.get_type_hints(options_type)
    values = {name: _coerce(name, raw[name], hints[name]) for name in raw}
    return options_type(**values)  # __post_init__ range checks raise OptionsError


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check `value` against a simple hint: bool, int, float, str, a Literal, or tuple[X, ...]."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise OptionsError(key, f"expected one of {list(allowed)}, got {value!r}")
        return value
    if origin is tuple:
        item_hint = typing.get_args(hint)[0]
        if not isinstance(value, (list, tuple)):
            raise OptionsError(key, f"expected a list, got {value!r}")
        return tuple(_coerce(key, item, item_hint) for item in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (bool, int, float, str):
        wrong_bool = hint is not bool and isinstance(value, bool)
        if not isinstance(value, hint) or wrong_bool:
            raise OptionsError(key, f"expected {hint.__name__}, got {value!r}")
        return value
    raise OptionsError(key, f"unsupported option type {hint!r}")


def option(default: Any, *, low: float | None = None, high: float | None = None,
           length: int | None = None) -> Any:
    """A dataclass field: `default`, with the bounds `check_bounds` enforces."""
    return dataclasses.field(default=default, metadata={"low": low, "high": high, "length": length})


def check_bounds(options: Any) -> None:
    """Raise OptionsError for the first field outside the bounds its `option()` declares."""
    for field in dataclasses.fields(options):
        value, bounds = getattr(options, field.name), field.metadata
        if bounds.get("length") is not None and len(value) != bounds["length"]:
            raise OptionsError(field.name, f"needs {bounds['length']} values, got {len(value)}")
        low, high = bounds.get("low"), bounds.get("high")
        if (low is not None and value < low) or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f">= {low}"
            raise OptionsError(field.name, f"must be {bound}, got {value}")
