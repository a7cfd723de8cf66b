"""Handlers that run inside TorchServe workers.

A model author imports everything from here:

    from handlers import Input, ModelHandler, NUMBER_TYPES, Output, RuntimeOptions, load_weights, option

and writes one module with one `ModelHandler` subclass (TorchServe wants exactly
one class defined in the module named by `--handler`; imported ones don't count).
`handlers.base` holds the contract; docs/adding-a-model.md walks through it.
"""

from handlers.base import ModelHandler
from handlers.errors import InvalidInput, PayloadTooLarge, RequestError, UnsupportedMediaType, brief, located
from handlers.modules import find_handler_class, handler_class
from handlers.options import OptionsError, option
from handlers.placement import pick_device
from handlers.request import Instances
from handlers.runtime import RuntimeOptions, to_device
from handlers.signature import NUMBER_TYPES, Input, Output
from handlers.validation import check_budget, check_count, float_matrix
from handlers.weights import load_weights

__all__ = [
    "NUMBER_TYPES", "Input", "Instances", "InvalidInput", "ModelHandler", "OptionsError", "Output",
    "PayloadTooLarge", "RequestError", "RuntimeOptions", "UnsupportedMediaType", "brief", "check_budget",
    "check_count", "find_handler_class", "float_matrix", "handler_class", "load_weights", "located", "option",
    "pick_device", "to_device",
]
