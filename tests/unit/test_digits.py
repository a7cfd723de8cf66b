"""The digits handler: any image size or polarity in, one digit out, bad images fail alone."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scripts.build import datasets
from scripts.build.models import digit_png
from scripts.harness import FormField, LocalModel, RawRequest
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
    with LocalModel.from_config(CONFIG, {"max_pixels": 1000, "warmup": False}) as small:
        buffer = io.BytesIO()
        Image.new("L", (100, 100)).save(buffer, format="PNG")
        results = small.run([RawRequest(buffer.getvalue(), "image/png")])
    assert results[0].status == 413
    assert "limit is 1000" in results[0].json()["error"]


def test_request_over_its_pixel_budget_is_413_alone_before_decoding(digits: LocalModel) -> None:
    """The budget counts every image of one request (form fields too); the others in its batch answer."""
    images = datasets.digits().held_out_x[:2]
    expected = reference_digits(images)
    png = [big_dark_on_light(image, "PNG") for image in images]  # 64x64 = 4096 pixels each
    truncated = png[0][: len(png[0]) // 2]  # its header says 64x64; decoding it would be a 400
    with LocalModel.from_config(CONFIG, {"max_request_pixels": 3 * 4096 - 1, "warmup": False}) as budgeted:
        results = budgeted.run([
            RawRequest.json({"image": [base64.b64encode(data).decode() for data in (png[0], png[1])]}),
            RawRequest.json({"image": [base64.b64encode(data).decode() for data in (*png, truncated)]}),
            RawRequest.multipart(*(FormField(name, data, "image/png") for name, data in
                                   zip("abc", (*png, png[0]), strict=True))),
            RawRequest(png[1], "image/png"),
        ])
    assert [r.status for r in results] == [200, 413, 413, 200]
    assert [answer["digit"] for answer in results[0].json()] == list(expected)
    assert results[3].json()["digit"] == expected[1]
    for refused in results[1:3]:
        assert refused.json() == {
            "code": 413, "type": "PayloadTooLarge",
            "error": "12288 pixels in one request; the limit is 12287 (max_request_pixels)"}
