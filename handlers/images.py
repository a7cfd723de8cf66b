"""Image bytes to an 8x8 digit tensor in the format scikit-learn's digits were made in."""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from handlers.errors import InvalidInput, PayloadTooLarge, brief

FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")  # all Pillow would parse is more attack surface
_FORMAT_NAMES = "PNG, JPEG, BMP, GIF, WebP or TIFF"
PILLOW_MAX_PIXELS = int(Image.MAX_IMAGE_PIXELS or 0)  # Pillow refuses larger images itself
IMAGE_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/jpg", "image/bmp", "image/gif", "image/webp",
     "image/tiff", "application/octet-stream"}
)


def open_image(data: bytes, max_pixels: int, draft: tuple[int, int] | None = None) -> Image.Image:
    """Open and fully decode `data`; 400 if it is not a whole image, 413 if over `max_pixels`."""
    return decode_image(image_header(data, max_pixels), draft)


def image_header(data: bytes, max_pixels: int) -> Image.Image:
    """The image with only its header read: 400 if it is not an image, 413 if over `max_pixels`.

    No pixel is decoded yet, so a decompression bomb costs nothing and a request's
    images can all be sized before any is decoded. Only the formats in `FORMATS` are parsed.
    """
    if not data:
        raise InvalidInput(f"empty body: expected image bytes ({_FORMAT_NAMES})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PayloadTooLarge(
            f"image has over {Image.MAX_IMAGE_PIXELS} pixels; the limit is {max_pixels}"
        ) from None
    except UnidentifiedImageError:
        raise InvalidInput(f"body is not a readable image (expected {_FORMAT_NAMES})") from None
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - Pillow raises many types for damaged files
        raise _damaged(error) from None
    pixels = image.width * image.height
    if pixels > max_pixels:
        raise PayloadTooLarge(
            f"image is {image.width}x{image.height} = {pixels} pixels; the limit is {max_pixels}"
        )
    return image


def decode_image(image: Image.Image, draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode the pixels of an image from `image_header`; 400 if they are damaged or truncated.

    `draft` lets JPEG decode at a reduced scale no smaller than that size.
    """
    try:
        if draft is not None:
            image.draft("L", draft)
        image.load()
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - Pillow raises many types for damaged files
        raise _damaged(error) from None
    return image


def _damaged(error: Exception) -> InvalidInput:
    return InvalidInput(f"image could not be decoded ({brief(str(error), 80)}); is it truncated?")


def base64_bytes(value: Any, where: str) -> bytes:
    """Bytes from a base64 string, a `data:` URI or {"b64": "..."}; anything else is a 400.

    Standard and URL-safe alphabets are accepted, with or without padding and line breaks.
    """
    if isinstance(value, dict) and set(value) == {"b64"}:
        value = value["b64"]
    if not isinstance(value, str):
        raise InvalidInput(f"'{where}' must be base64 image bytes as a string or {{\"b64\": \"...\"}}")
    if value.startswith("data:"):
        header, comma, value = value.partition(",")
        if not comma:
            raise InvalidInput(f"'{where}' is a data: URI without a ',' before its data")
        if not header.endswith(";base64"):
            raise InvalidInput(f"'{where}' is a data: URI without ';base64'")
    text = "".join(value.split())
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"'{where}' is not valid base64") from None


def to_digit_tensor(image: Image.Image, side: int, ink: str) -> torch.Tensor:
    """Grey levels resized to side x side by area averaging, ink bright, scaled to 0..16.

    scikit-learn's digits count ink pixels in 4x4 blocks of a 32x32 bitmap, so area
    averaging (BOX) of a larger image reproduces them. With `ink="auto"` the
    background is taken to be whatever colour the border mostly has.
    """
    try:
        upright = ImageOps.exif_transpose(image)
        grey = _flatten_alpha(upright).convert("L").resize((side, side), Image.Resampling.BOX)
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - colour modes Pillow cannot convert, damaged EXIF
        raise InvalidInput(
            f"image ({image.mode}) cannot be read as grey levels ({brief(str(error), 80)})"
        ) from None
    pixels = np.asarray(grey, dtype=np.float32)
    if ink == "dark" or (ink == "auto" and _border_mean(pixels) > 127.5):
        pixels = 255.0 - pixels
    return torch.from_numpy(pixels * (16.0 / 255.0)).reshape(1, 1, side, side)


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Transparent pixels count as background: composite the image over white."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba)
    return image


def _border_mean(pixels: np.ndarray) -> float:
    border = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    return float(border.mean())
