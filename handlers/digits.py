"""Handwritten-digit classifier trained on scikit-learn's 8x8 digits.

Request: image bytes (PNG, JPEG, ... any size or mode) with an `image/*` or
`application/octet-stream` content type. The image is resized to 8x8 by area
averaging; dark ink on a light background is inverted automatically.
Response: {"digit": 3, "probabilities": [10 numbers]}.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from handlers.architectures import DIGITS_SIDE, DigitsCNN
from handlers.base import Decoded, ModelHandler
from handlers.images import IMAGE_TYPES, open_image, to_digit_tensor
from handlers.options import check_range
from handlers.payload import Payload
from handlers.validation import require_content_type
from handlers.weights import load_module


class DigitsHandler(ModelHandler):
    """One image per request; many requests share one forward pass."""

    @dataclass(frozen=True)
    class Options:  # nested: TorchServe wants exactly one class per handler module
        weights: str = "digits.safetensors"
        max_pixels: int = 4096 * 4096
        ink: Literal["auto", "light", "dark"] = "auto"

        def __post_init__(self) -> None:
            check_range("max_pixels", self.max_pixels, 1)

    def load(self, model_dir: Path) -> None:
        self.model = load_module(DigitsCNN(), model_dir / self.options.weights, self.device)

    def decode(self, payload: Payload) -> Decoded:
        require_content_type(payload, IMAGE_TYPES, "image bytes as image/png or image/jpeg")
        image = open_image(payload.raw_bytes(), self.options.max_pixels)
        return Decoded(to_digit_tensor(image, DIGITS_SIDE, self.options.ink), single=True)

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(batch), dim=1)

    def encode(self, row: torch.Tensor) -> Any:
        return {"digit": int(row.argmax()), "probabilities": row.tolist()}
