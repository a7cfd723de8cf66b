"""Handwritten-digit classifier trained on scikit-learn's 8x8 digits.

Native request: image bytes (PNG, JPEG, ... any size or mode) as `image/*` or
`application/octet-stream`; or JSON {"image": BASE64} / {"image": [BASE64, ...]};
or a multipart form with one image file per field.
KServe v1 instance: BASE64 or {"b64": BASE64}. OIP input: "image", BYTES, shape [N].
(BASE64: standard or URL-safe base64 of the image file, or a `data:image/...;base64,` URI.)
The image is resized to 8x8 by area averaging; dark ink on a light background is
inverted automatically.
Response: {"digit": 3, "probabilities": [10 numbers]}; OIP outputs "digit" (INT64 [N])
and "probabilities" (FP32 [N, 10]).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from handlers.architectures import DIGITS_SIDE, DigitsCNN
from handlers.base import Decoded, ModelHandler
from handlers.errors import InvalidInput, RequestError
from handlers.images import IMAGE_TYPES, PILLOW_MAX_PIXELS, base64_bytes, open_image, to_digit_tensor
from handlers.options import check_range
from handlers.payload import Payload
from handlers.runtime import RuntimeOptions
from handlers.tensors import OutputTensor, TensorSpec
from handlers.validation import JSON_TYPES, check_count, require_content_type
from handlers.weights import load_module

_JSON_TYPES = JSON_TYPES - {""}  # a body without a Content-Type is read as an image


class DigitsHandler(ModelHandler):
    """Each image is one instance; many requests share one forward pass."""

    INPUT = TensorSpec("image", frozenset({"BYTES"}))
    OUTPUTS = ("digit", "probabilities")
    NETWORK_INPUTS = {"image": ("batch",)}

    @dataclass(frozen=True)
    class Options(RuntimeOptions):  # nested: TorchServe wants exactly one class per handler module
        weights: str = "digits.safetensors"
        # A request decodes at most max_instances x max_pixels pixels: 16 x 2048^2 is about
        # 1.2 s of one core for the worst (transparent PNG) images; raise both with care.
        max_pixels: int = 2048 * 2048
        max_instances: int = 16
        ink: Literal["auto", "light", "dark"] = "auto"

        def __post_init__(self) -> None:
            super().__post_init__()
            check_range("max_pixels", self.max_pixels, 1, PILLOW_MAX_PIXELS)
            check_range("max_instances", self.max_instances, 1)

    def network(self, model_dir: Path) -> nn.Module:
        cnn = load_module(DigitsCNN(), model_dir / self.options.weights, torch.device("cpu"),
                          mmap=self.options.mmap_weights)
        return nn.Sequential(cnn, nn.Softmax(dim=1))

    def warmup_instances(self) -> list[torch.Tensor]:
        return [torch.zeros(1, 1, DIGITS_SIDE, DIGITS_SIDE)]

    def decode(self, payload: Payload) -> Decoded:
        if payload.parsed or payload.content_type in _JSON_TYPES:
            return self._decode_json(payload.json())
        require_content_type(  # no Content-Type at all: read the bytes as an image
            payload, IMAGE_TYPES | {""},
            'image bytes (image/png, image/jpeg, ...) or application/json {"image": BASE64}',
        )
        return Decoded(self._tensor(payload.raw_bytes()), single=True)

    def decode_instances(self, values: list[Any], where: str) -> torch.Tensor:
        return torch.cat([
            self._tensor(base64_bytes(value, f"{where}[{number}]"), f"{where}[{number}]")
            for number, value in enumerate(values)
        ])

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        return self.engine(batch)

    def encode(self, row: torch.Tensor) -> Any:
        return {"digit": int(row.argmax()), "probabilities": row.tolist()}

    def encode_outputs(self, rows: torch.Tensor) -> list[OutputTensor]:
        return [OutputTensor.of("digit", "INT64", rows.argmax(dim=1)),
                OutputTensor.of("probabilities", "FP32", rows)]

    def _decode_json(self, document: Any) -> Decoded:
        if not isinstance(document, dict) or "image" not in document:
            raise InvalidInput('expected a JSON object {"image": BASE64} or {"image": [BASE64, ...]}')
        images = document["image"]
        if not isinstance(images, list):
            return Decoded(self._tensor(base64_bytes(images, "image"), "image"), single=True)
        if not images:
            raise InvalidInput("'image' is an empty list; send at least one image")
        check_count(len(images), self.options.max_instances, "images")
        return Decoded(self.decode_instances(images, "image"), single=False)

    def _tensor(self, data: bytes, where: str = "body") -> torch.Tensor:
        try:
            image = open_image(data, self.options.max_pixels, draft=(8 * DIGITS_SIDE, 8 * DIGITS_SIDE))
            return to_digit_tensor(image, DIGITS_SIDE, self.options.ink)
        except RequestError as error:
            if where == "body":
                raise
            raise type(error)(f"'{where}': {error.message}") from None
