"""Handlers that run inside TorchServe workers.

A model author imports everything the toolkit gives from here:

    from handlers import Input, ModelHandler, NUMBER_TYPES, Output, RuntimeOptions, load_weights, option

and writes one module with one `ModelHandler` subclass (TorchServe wants exactly
one class defined in the module named by `--handler`; imported ones don't count).
`handlers.base` holds the contract; docs/adding-a-model.md walks through it. Besides
the contract: checks for request values (numbers, texts, budgets), the image helpers,
text batching for a tokenizer-fed network, and safe weight loading. A model's network
is its own code (the example models keep theirs in `handlers.architectures`).

The toolkit's own modules import each other by module name, never from here.
"""

from handlers.base import ModelHandler
from handlers.errors import InvalidInput, PayloadTooLarge, RequestError, UnsupportedMediaType, brief, located
from handlers.images import (
    IMAGE_TYPES,
    PILLOW_MAX_PIXELS,
    base64_bytes,
    decode_image,
    image_header,
    open_image,
    to_digit_tensor,
)
from handlers.modules import find_handler_class, handler_class
from handlers.options import OptionsError, option
from handlers.placement import pick_device
from handlers.request import Instances
from handlers.runtime import RuntimeOptions, length_buckets, to_device
from handlers.signature import NUMBER_TYPES, Input, Output
from handlers.text import TOKEN_INPUTS, TextBatch, TextEncoder, is_unicode, text_list
from handlers.validation import check_budget, check_count, float_matrix
from handlers.weights import load_weights

__all__ = [
    "IMAGE_TYPES", "NUMBER_TYPES", "PILLOW_MAX_PIXELS", "TOKEN_INPUTS", "Input", "Instances",
    "InvalidInput", "ModelHandler", "OptionsError", "Output", "PayloadTooLarge", "RequestError",
    "RuntimeOptions", "TextBatch", "TextEncoder", "UnsupportedMediaType", "base64_bytes", "brief",
    "check_budget", "check_count", "decode_image", "find_handler_class", "float_matrix", "handler_class",
    "image_header", "is_unicode", "length_buckets", "load_weights", "located", "open_image", "option",
    "pick_device", "text_list", "to_device", "to_digit_tensor",
]
