"""Safe image decoding: allowed formats only, a pixel limit checked from the header, bounded peak memory.

* Only :data:`ALLOWED_FORMATS` are ever parsed (``Image.open(..., formats=...)``): an EPS, GIF or TIFF
  member never reaches its Pillow plugin (EPS would start Ghostscript); it is ``unsupported_image_format``
  (recognised from the plugins' signature checks alone). Bytes no format recognises are ``corrupt_image``.
* PIL's own decompression-bomb check only warns below twice its limit, so copyguard applies its own limit
  (a setting: ``max_pixels``) from the header, then fully decodes to catch truncated or corrupt data. PIL's
  hard error (above ~179 Mpx) is mapped to the same ``image_too_large`` reason.
* A caller that resizes anyway passes ``min_side``: a JPEG is then decoded at a reduced DCT scale
  (``Image.draft``) and any image is box-reduced (``Image.reduce``) *before* the conversion to RGB, so a
  huge 1-bit or palette image never becomes a full-size RGB copy. The reduced image keeps at least
  ``REDUCING_GAP`` x ``min_side`` pixels per side, so the caller's final bicubic resize looks the same.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image

from copyguard.common.errors import UsageError
from copyguard.curation.config import DEFAULT_MAX_PIXELS
from copyguard.curation.records import RejectReason

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "REDUCING_GAP",
    "ImageDecodeError",
    "decode_image",
    "image_size",
    "resize_batch",
    "to_rgb_array",
    "trim_uniform_border",
]

# Pillow format names parsed at all (a camera's multi-picture JPEG opens as JPEG, format MPO).
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")
# A pre-shrunk image keeps this many times the requested side (Pillow's ``reducing_gap`` idea).
REDUCING_GAP = 3


class ImageDecodeError(ValueError):
    """Raised when bytes are not a usable image; ``reason`` says why."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _other_format(data: bytes) -> str | None:
    """The Pillow format (not an allowed one) whose signature ``data`` starts with, if any. Only the
    plugins' prefix checks run here; no plugin parses the bytes."""
    Image.init()
    prefix = data[:16]
    for name, (_, accept) in Image.OPEN.items():
        if name in ALLOWED_FORMATS or accept is None:
            continue
        try:
            if accept(prefix):
                return name
        except Exception:  # a prefix check that chokes on short input: not that format
            continue
    return None


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageDecodeError(RejectReason.EMPTY_FILE, "zero-byte image")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        except Image.DecompressionBombError as exc:
            raise ImageDecodeError(RejectReason.IMAGE_TOO_LARGE, str(exc)) from None
        except Image.UnidentifiedImageError:  # its message holds the stream's repr (an address)
            other = _other_format(data)
            if other is None:
                raise ImageDecodeError(
                    RejectReason.CORRUPT_IMAGE, f"unreadable image header (starts with {data[:8]!r})"
                ) from None
            raise ImageDecodeError(
                RejectReason.UNSUPPORTED_IMAGE_FORMAT,
                f"{other} image; accepted formats: {', '.join(ALLOWED_FORMATS)}",
            ) from None
        except Exception as exc:  # PIL raises many types for unreadable headers
            raise ImageDecodeError(RejectReason.CORRUPT_IMAGE, f"unreadable image header: {exc}") from None
    w, h = img.size
    if w * h > max_pixels:
        raise ImageDecodeError(
            RejectReason.IMAGE_TOO_LARGE, f"{w}x{h} = {w * h} pixels exceeds max_pixels={max_pixels}"
        )
    return img


def image_size(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, *, load: bool = True) -> tuple[int, int]:
    """``(width, height)`` of ``data``; with ``load`` (the default) it is fully decoded to catch truncation.

    ``load=False`` checks only the header (format, pixel limit) and leaves the decode to the caller.
    """
    img = _open(data, max_pixels)
    if load:
        _load(img)
    return img.size


def _load(img: Image.Image) -> None:
    try:
        img.load()
    except Exception as exc:
        raise ImageDecodeError(RejectReason.CORRUPT_IMAGE, f"image data does not decode: {exc}") from None


def _shrink(img: Image.Image, min_side: int) -> Image.Image:
    """Box-reduce a loaded image by the largest integer factor that keeps ``REDUCING_GAP * min_side``."""
    w, h = img.size
    factor = min(w, h) // (REDUCING_GAP * min_side)
    if factor < 2:
        return img
    if img.mode == "1":
        img = img.convert("L")  # same bytes per pixel; reduce() needs 8-bit levels
    elif img.mode not in ("L", "LA", "RGB", "RGBA", "I", "F", "CMYK", "YCbCr"):
        img = img.convert("RGBA" if img.mode in ("PA", "RGBa", "La") else "RGB")
    return img.reduce(factor)


def decode_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, *, min_side: int | None = None
) -> Image.Image:
    """Decode to an RGB :class:`PIL.Image.Image`, or raise :class:`ImageDecodeError`.

    With ``min_side`` (the side the caller resizes to next) the image comes back pre-shrunk to about
    ``REDUCING_GAP * min_side`` per side when it is larger (aspect kept): JPEG via ``draft``, everything via
    ``reduce`` before the RGB conversion, so peak memory is one native-mode decode, never a full RGB copy.
    """
    img = _open(data, max_pixels)
    if min_side is not None and min_side > 0:
        side = REDUCING_GAP * min_side
        if img.format in ("JPEG", "MPO") and min(img.size) >= 2 * side:
            img.draft("RGB", (side, side))  # DCT scaling: decodes at 1/2, 1/4 or 1/8 size
        _load(img)
        img = _shrink(img, min_side)
    else:
        _load(img)
    return img.convert("RGB") if img.mode != "RGB" else img


def to_rgb_array(data: bytes, size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode to a uint8 HWC RGB array, optionally resized to ``size`` x ``size`` (bicubic)."""
    img = decode_image(data, max_pixels, min_side=size)
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def _border_lines(lines: np.ndarray, tol: float, limit: int) -> int:
    """How many leading lines of ``lines`` (``[L, P, 3]``) are a border: each nearly one colour (98 % of
    its pixels within ``tol`` of its median) and close in colour to the line before (gradients pass)."""
    head = lines[:limit]
    if not len(head):
        return 0
    median = np.median(head, axis=1)  # [L, 3]
    spread = np.quantile(np.abs(head - median[:, None, :]).max(axis=2), 0.98, axis=1)
    step = np.r_[0.0, np.abs(np.diff(median, axis=0)).max(axis=1)]
    bad = np.flatnonzero((spread > tol) | (step > tol))
    return int(bad[0]) if len(bad) else len(head)


def trim_uniform_border(
    image: Image.Image, tol: float = 14.0, max_fraction: float = 0.45, min_fraction: float = 0.02
) -> Image.Image:
    """``image`` without its border bars: padding, letterbox bars and gradient strips that are each one
    colour along the edge (``tol``: grey levels of JPEG ringing allowed).

    A side loses at most ``max_fraction`` of the size; fewer than ``min_fraction`` lines (at least one)
    are no border. Runs on a copy at most 96 px per side, so it costs little next to the embedder.
    """
    w, h = image.size
    scale = min(1.0, 96.0 / max(w, h))
    small = (
        image
        if scale == 1.0
        else image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BOX)
    )
    a = np.asarray(small.convert("RGB"), dtype=np.float32)
    sh, sw = a.shape[:2]
    lim_h, lim_w = int(sh * max_fraction), int(sw * max_fraction)
    cols = a.transpose(1, 0, 2)
    cuts = [
        _border_lines(a, tol, lim_h),  # top
        _border_lines(a[::-1], tol, lim_h),  # bottom
        _border_lines(cols, tol, lim_w),  # left
        _border_lines(cols[::-1], tol, lim_w),  # right
    ]
    least = [max(1, round(min_fraction * side)) for side in (sh, sh, sw, sw)]
    top, bottom, left, right = (c if c >= m else 0 for c, m in zip(cuts, least, strict=True))
    if not (top or bottom or left or right):
        return image
    box = (round(left / scale), round(top / scale), w - round(right / scale), h - round(bottom / scale))
    if box[2] - box[0] < 8 or box[3] - box[1] < 8:
        return image
    return image.crop(box)


def _as_rgb(image: np.ndarray, index: int) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise UsageError(f"image {index}: expected a uint8 array, got {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise UsageError(f"image {index}: expected an HxWx3 RGB array, got shape {tuple(np.shape(image))}")
    return arr


def resize_batch(
    images: Sequence[np.ndarray], size: int, start: int = 0, trim_borders: bool = False
) -> np.ndarray:
    """Stack images into uint8 ``[N, size, size, 3]`` (PIL bicubic, antialiased when shrinking).

    Grayscale (HxW, HxWx1) is repeated to RGB and an alpha channel dropped; anything else that is not a
    uint8 HxWx3 array raises :class:`UsageError` (``start`` offsets the index in that message). With
    ``trim_borders`` each image first loses its uniform border bars
    (:func:`copyguard.curation.images.trim_uniform_border`).
    """
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        arr = _as_rgb(image, start + i)
        if trim_borders:
            trimmed = trim_uniform_border(Image.fromarray(arr))
            if trimmed.size != (arr.shape[1], arr.shape[0]):
                arr = np.asarray(trimmed)
        if arr.shape[:2] != (size, size):
            arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.BICUBIC))
        out[i] = arr
    return out
