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

from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from torch import nn

from handlers import (
    IMAGE_TYPES,
    PILLOW_MAX_PIXELS,
    Input,
    Instances,
    ModelHandler,
    Output,
    RequestError,
    RuntimeOptions,
    base64_bytes,
    check_budget,
    decode_image,
    image_header,
    load_weights,
    located,
    open_image,
    option,
    to_digit_tensor,
)
from handlers.architectures import DIGITS_CLASSES, DIGITS_SIDE, DigitsCNN


class DigitsHandler(ModelHandler):
    """Each image is one instance; many requests share one forward pass."""

    # A body without a Content-Type is read as an image.
    INPUT = Input("image", frozenset({"BYTES"}), raw_types=IMAGE_TYPES | {""}, words="base64 image bytes")
    OUTPUTS = (Output("digit", "INT64"), Output("probabilities", "FP32", (DIGITS_CLASSES,)))
    NETWORK_INPUTS = {"image": (1, DIGITS_SIDE, DIGITS_SIDE)}

    @dataclass(frozen=True)
    class Options(RuntimeOptions):  # nested: TorchServe wants exactly one class per handler module
        weights: str = "digits.safetensors"
        max_pixels: int = option(2048 * 2048, low=1, high=PILLOW_MAX_PIXELS)  # per image
        max_instances: int = option(16, low=1)
        # All images of one request together, checked from their headers before any is
        # decoded. Decoding costs up to ~50 ns a pixel (16-bit transparent PNG), so this
        # bounds a batch's time: keep batchSize x max_request_pixels well inside responseTimeout.
        max_request_pixels: int = option(3 * 2048 * 2048, low=1)
        ink: Literal["auto", "light", "dark"] = "auto"

    def load_model(self, model_dir: Path) -> nn.Module:
        cnn = load_weights(DigitsCNN(), model_dir / self.options.weights, mmap=self.options.mmap_weights)
        return nn.Sequential(cnn, nn.Softmax(dim=1))

    def admit(self, parts: list[Instances]) -> list[Instances]:
        """413 when the request's images hold more than max_request_pixels, read from their headers.

        Decoding is this model's cost, so the budget is checked before any image is decoded;
        preprocess decodes the images opened here rather than reading them again.
        """
        opened = [replace(part, values=[self._header(value, part.raw) for value in part.values])
                  for part in parts]
        pixels = sum(image.width * image.height for part in opened for image in part.values
                     if isinstance(image, Image.Image))
        check_budget(pixels, self.options.max_request_pixels, "pixels", "max_request_pixels")
        return opened

    def preprocess(self, request: Instances) -> torch.Tensor:
        """Raw bodies are the image itself; JSON values are base64, and errors name the value."""
        images = []
        draft = (8 * DIGITS_SIDE, 8 * DIGITS_SIDE)
        for value, name in zip(request.values, request.names, strict=True):
            opened = isinstance(value, Image.Image)  # by admit; if not, open_image says what is wrong
            data = value if opened or request.raw else base64_bytes(value, name)
            with nullcontext() if request.raw else located(f"'{name}'"):
                image = (decode_image(data, draft) if opened
                         else open_image(data, self.options.max_pixels, draft))
                images.append(to_digit_tensor(image, DIGITS_SIDE, self.options.ink))
        return torch.cat(images)

    def _header(self, value: Any, raw: bool) -> Any:
        """The image with its header read, or `value` itself when it is bad (preprocess names why)."""
        try:
            return image_header(value if raw else base64_bytes(value, "image"), self.options.max_pixels)
        except RequestError:
            return value

    def postprocess(self, rows: torch.Tensor) -> dict[str, Any]:
        return {"digit": rows.argmax(dim=1), "probabilities": rows}

