"""The digits handler: any image size or polarity in, one digit out, bad images fail alone."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scripts.build import datasets
from scripts.build.models import digit_png
from scripts.harness import LocalModel, RawRequest
from tests.helpers import reference_digits

CONFIG = Path("configs/models/digits.yaml")


@pytest.fixture(scope="module")
def digits() -> LocalModel:
    return LocalModel.from_config(CONFIG)


def big_dark_on_light(image: np.ndarray, fmt: str) -> bytes:
    """The 8x8 digit scaled up 8x, dark ink on a white background, as a person would draw it."""
    pixels = 255 - np.clip(np.rint(image * 255 / 16), 0, 255).astype(np.uint8)
    big = Image.fromarray(pixels, mode="L").resize((64, 64), Image.Resampling.NEAREST).convert("RGB")
    buffer = io.BytesIO()
    big.save(buffer, format=fmt, quality=95)
    return buffer.getvalue()


def test_good_and_bad_images_in_one_batch(digits: LocalModel) -> None:
    images = datasets.digits().held_out_x[:3]
    expected = reference_digits(images)
    png = digit_png(images[0])
    results = digits.run([
        RawRequest(png, "image/png"),
        RawRequest(png[: len(png) // 2], "image/png"),                 # truncated
        RawRequest(big_dark_on_light(images[1], "PNG"), "image/png"),  # 64x64, inverted, RGB
        RawRequest(b"\x00\x01garbage" * 10, "application/octet-stream"),
        RawRequest(big_dark_on_light(images[2], "JPEG"), "image/jpeg"),
        RawRequest.json({"image": "not base64!"}),
        RawRequest(png, "text/csv"),
    ])
    assert [r.status for r in results] == [200, 400, 200, 400, 200, 400, 415]
    assert results[5].json()["error"] == "'image' is not valid base64"
    assert results[0].json()["digit"] == expected[0]
    assert results[2].json()["digit"] == expected[1]
    assert results[4].json()["digit"] == expected[2]
    assert len(results[0].json()["probabilities"]) == 10


def test_unconvertible_colour_mode_is_400(digits: LocalModel) -> None:
    buffer = io.BytesIO()
    Image.new("L", (32, 32)).convert("LAB").save(buffer, format="TIFF")
    results = digits.run([RawRequest(buffer.getvalue(), "image/tiff"),
                          RawRequest(digit_png(datasets.digits().held_out_x[0]), "image/png")])
    assert [r.status for r in results] == [400, 200]


def test_image_over_the_pixel_limit_is_413_before_decoding() -> None:
    with LocalModel.from_config(CONFIG, {"max_pixels": 1000}) as small:
        buffer = io.BytesIO()
        Image.new("L", (100, 100)).save(buffer, format="PNG")
        results = small.run([RawRequest(buffer.getvalue(), "image/png")])
    assert results[0].status == 413
    assert "limit is 1000" in results[0].json()["error"]
