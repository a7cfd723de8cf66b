"""Which handler a module defines: TorchServe loads the one class its handler module defines.

A model's module may import any number of classes; it must define exactly one
`ModelHandler` subclass (options and helpers nest inside it), so `--handler
handlers/NAME.py` names one handler without ambiguity.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from handlers.base import ModelHandler


def handler_class(handler: Path) -> type[ModelHandler]:
    """The one ModelHandler subclass defined in `handlers/NAME.py` (a path relative to the repository)."""
    return find_handler_class(importlib.import_module(".".join(handler.with_suffix("").parts)), handler)


def find_handler_class(module: ModuleType, handler: Path) -> type[ModelHandler]:
    """The one ModelHandler subclass `module` defines (TorchServe loads exactly that one)."""
    found = [
        value for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, ModelHandler)
        and value.__module__ == module.__name__ and value is not ModelHandler
    ]
    if len(found) != 1:
        raise ValueError(f"{handler} must define exactly one ModelHandler subclass, found {len(found)}")
    return found[0]
