"""Safe image decoding: a pixel limit checked from the header before any pixel is decoded.

PIL's own decompression-bomb check only warns below twice its limit, so copyguard applies its own limit
(a setting: ``max_pixels``) from the header, then fully decodes to catch truncated or corrupt data. PIL's
hard error (above ~179 Mpx) is mapped to the same ``image_too_large`` reason.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from copyguard.curation.records import RejectReason

__all__ = ["DEFAULT_MAX_PIXELS", "ImageDecodeError", "decode_image", "image_size", "to_rgb_array"]

DEFAULT_MAX_PIXELS = 64_000_000


class ImageDecodeError(ValueError):
    """Raised when bytes are not a usable image; ``reason`` says why."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageDecodeError(RejectReason.EMPTY_FILE, "zero-byte image")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise ImageDecodeError(RejectReason.IMAGE_TOO_LARGE, str(exc)) from None
        except Exception as exc:  # PIL raises many types for unreadable headers
            raise ImageDecodeError(RejectReason.CORRUPT_IMAGE, f"unreadable image header: {exc}") from None
    w, h = img.size
    if w * h > max_pixels:
        raise ImageDecodeError(
            RejectReason.IMAGE_TOO_LARGE, f"{w}x{h} = {w * h} pixels exceeds max_pixels={max_pixels}"
        )
    return img


def image_size(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Fully decode ``data`` (to catch truncation) and return ``(width, height)``."""
    img = _open(data, max_pixels)
    _load(img)
    return img.size


def _load(img: Image.Image) -> None:
    try:
        img.load()
    except Exception as exc:
        raise ImageDecodeError(RejectReason.CORRUPT_IMAGE, f"image data does not decode: {exc}") from None


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode to an RGB :class:`PIL.Image.Image`, or raise :class:`ImageDecodeError`."""
    img = _open(data, max_pixels)
    _load(img)
    return img.convert("RGB") if img.mode != "RGB" else img


def to_rgb_array(data: bytes, size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode to a uint8 HWC RGB array, optionally resized to ``size`` x ``size`` (bicubic)."""
    img = decode_image(data, max_pixels)
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)
