"""What a model YAML needs from the built tree and the handler's code, checked before anything uses it.

scripts/config/model.py reads the YAML's text alone, so tsctl and `make manifests`
run without torch and before `make models`. Building an archive or loading a
handler needs more, and this checks it first, with the same one-line ConfigError
(file, key, fix): the files exist, the handler module defines one ModelHandler
subclass, and the handler options of every profile (model_config, and the gpu:
overlay when there is one) parse as the worker will parse them, so a bad gpu:
overlay fails on a CPU machine too, before anyone ships it to a GPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from handlers.base import ModelHandler
from handlers.modules import handler_class
from handlers.options import OptionsError, parse_options
from scripts.config.files import ConfigError
from scripts.config.model import SECTIONS, ModelSpec, load_spec


def load_buildable(path: Path, root: Path = Path("."), device: str = "cpu") -> ModelSpec:
    """`load_spec`, then `check_buildable`: for whatever builds or loads the model from its YAML."""
    spec = load_spec(path, root, device)
    check_buildable(spec, root)
    return spec


def check_buildable(spec: ModelSpec, root: Path = Path(".")) -> None:
    """Raise ConfigError on the first thing the build or a worker would trip over."""
    path = spec.source
    if not (root / spec.handler).is_file():
        raise ConfigError(path, "handler", f"file {spec.handler} does not exist",
                          "point it at an existing handlers/*.py module")
    for file in spec.files:
        if not (root / file).is_file():
            raise ConfigError(path, "files", f"file {file} does not exist",
                              "run `make models` to build it, or correct the path")
    try:
        handler_type = handler_class(spec.handler)
    except Exception as error:  # noqa: BLE001 - an import or definition problem in the module
        raise ConfigError(path, "handler", f"{spec.handler} cannot be used as a handler ({error})",
                          "point it at a module that defines one ModelHandler subclass") from None
    # model_config is what gets packed: a copy with changed options (scripts/measure/variants.py) is checked
    for device, config in {**spec.profiles, spec.device: spec.model_config}.items():
        _check_options(spec, handler_type, config.get("handler"), SECTIONS[device])


def _check_options(spec: ModelSpec, handler_type: type[ModelHandler], raw: Mapping[str, Any] | None,
                   section: str) -> None:
    """Parse the options as the worker will; a weights option must name one of `files`."""
    try:
        options = parse_options(handler_type.Options, raw)
    except OptionsError as error:
        raise ConfigError(spec.source, f"{section}.handler.{error.key}", str(error),
                          f"see {handler_type.__name__}.Options in {spec.handler}") from None
    weights = getattr(options, "weights", None)
    if weights is not None and weights not in {file.name for file in spec.files}:
        raise ConfigError(spec.source, f"{section}.handler.weights", f"{weights!r} is not among files:",
                          "name one of the files listed under files: (by its file name)")
