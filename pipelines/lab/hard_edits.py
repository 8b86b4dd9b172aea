"""Copy edits of the ``hard`` sample-data preset: the edit families of web data and DISC21 (Douze et al.,
*The 2021 Image Similarity Dataset and Challenge*, 2021), with PIL and numpy only.

:func:`apply_edit` applies one family to an RGB image with parameters drawn from ``rng``; every family
works at any size from 64 px up. Families (:data:`EDIT_FAMILIES`):

- borders: ``pad_uniform`` (a solid border, sides drawn independently, or a letterbox to another aspect),
  ``pad_nonuniform`` (the border is a blurred stretched copy of the image, a gradient or noise),
  ``aspect`` (stretched to another aspect ratio);
- geometry: ``rotate`` (3-10 degrees, corners filled or cropped away), ``flip`` (mirrored left-right),
  ``perspective`` (corners moved by up to 12 % of a side);
- overlays: ``text_banner`` (a solid band with text, over the image or added above/below it),
  ``watermark`` (large half-transparent text), ``caption_burnt`` (meme-style outlined text at the bottom),
  ``sticker`` (a solid shape over 4-10 % of the area);
- ``crop`` (off-centre, 45-75 % of the area kept), ``rescale`` (x0.6-0.8 or x1.5-2.5), ``jpeg_heavy``
  (quality 15-30), ``blur`` (Gaussian, radius 0.6-1.6 % of the side), ``noise`` (Gaussian, sigma 5-12),
  ``grayscale``, ``color`` (brightness, contrast, saturation and hue shifts);
- ``combo``: two different families above, one after the other.

Most families return an image of another size; callers encode it as JPEG.
"""

from __future__ import annotations

import colorsys
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

__all__ = ["EDIT_FAMILIES", "SINGLE_FAMILIES", "apply_edit"]

SINGLE_FAMILIES = (
    "pad_uniform", "pad_nonuniform", "aspect", "rotate", "flip", "perspective", "text_banner",
    "watermark", "caption_burnt", "sticker", "crop", "rescale", "jpeg_heavy", "blur", "noise",
    "grayscale", "color",
)  # fmt: skip
EDIT_FAMILIES = (*SINGLE_FAMILIES, "combo")
_WORDS = ("SALE", "photo", "copyright 2021", "best deal", "LOL", "when you see it", "#tbt", "stock",
          "do not copy", "sample", "wow", "limited offer", "2019", "HD", "follow me")  # fmt: skip


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(8, int(size)))


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.random(), rng.random())
    choice = rng.integers(0, 3)
    if choice == 0:
        return (0, 0, 0)
    if choice == 1:
        return (255, 255, 255)
    return (int(r * 255), int(g * 255), int(b * 255))


def _pad_sizes(w: int, h: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    if rng.random() < 0.5:  # letterbox: bars on two opposite sides to reach another aspect ratio
        aspect = float(rng.choice([16 / 9, 4 / 3, 3 / 4, 9 / 16, 2.0]))
        if aspect >= 1:
            extra = max(2, round(h * aspect) - w)
            left = int(rng.integers(extra // 3, extra - extra // 3 + 1))
            return left, 0, extra - left, 0
        extra = max(2, round(w / aspect) - h)
        top = int(rng.integers(extra // 3, extra - extra // 3 + 1))
        return 0, top, 0, extra - top
    side = max(w, h)
    return tuple(round(side * rng.uniform(0.04, 0.3)) for _ in range(4))  # type: ignore[return-value]


def _pad(image: Image.Image, rng: np.random.Generator, uniform: bool) -> Image.Image:
    w, h = image.size
    left, top, right, bottom = _pad_sizes(w, h, rng)
    size = (w + left + right, h + top + bottom)
    if uniform:
        canvas = Image.new("RGB", size, _random_colour(rng))
    else:
        style = rng.integers(0, 3)
        if style == 0:  # the image itself, stretched and blurred (what social media do)
            canvas = image.resize(size, Image.Resampling.BILINEAR).filter(
                ImageFilter.GaussianBlur(max(size) * 0.05)
            )
        elif style == 1:  # a gradient between two colours
            a, b = np.array(_random_colour(rng), np.float32), np.array(_random_colour(rng), np.float32)
            t = np.linspace(0, 1, size[1], dtype=np.float32)[:, None, None]
            canvas = Image.fromarray(np.broadcast_to(a + (b - a) * t, (size[1], size[0], 3)).astype(np.uint8))
        else:  # noise around a colour
            base = np.array(_random_colour(rng), np.float32)
            noise = rng.normal(0, 40, (size[1], size[0], 3))
            canvas = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    canvas.paste(image, (left, top))
    return canvas


def _text(draw: ImageDraw.ImageDraw, xy, text, size, fill, stroke=None) -> None:
    kwargs = {"stroke_width": max(1, size // 12), "stroke_fill": stroke} if stroke is not None else {}
    draw.text(xy, text, fill=fill, font=_font(size), **kwargs)


def _banner(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = image.size
    band = max(10, round(h * rng.uniform(0.12, 0.22)))
    colour = _random_colour(rng)
    ink = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
    word = str(rng.choice(_WORDS))
    at_top = bool(rng.integers(0, 2))
    if rng.random() < 0.5:  # added: the canvas grows
        out = Image.new("RGB", (w, h + band), colour)
        out.paste(image, (0, band if at_top else 0))
    else:  # over the image
        out = image.copy()
        ImageDraw.Draw(out).rectangle((0, 0 if at_top else h - band, w, band if at_top else h), fill=colour)
    y0 = 0 if at_top else out.size[1] - band
    _text(ImageDraw.Draw(out), (max(1, round(w * rng.uniform(0.02, 0.3))), y0 + band // 6), word,
          round(band * 0.6), ink)  # fmt: skip
    return out


def _watermark(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = image.size
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    word = str(rng.choice(_WORDS))
    size = max(8, round(h * rng.uniform(0.1, 0.2)))
    alpha = int(rng.uniform(0.3, 0.55) * 255)
    ink = (255, 255, 255, alpha) if rng.random() < 0.6 else (0, 0, 0, alpha)
    for row in range(int(rng.integers(1, 4))):
        y = round(h * (0.15 + 0.3 * row + rng.uniform(-0.05, 0.05)))
        draw.text((round(w * rng.uniform(0.0, 0.3)), y), word, fill=ink, font=_font(size))
    return Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")


def _caption(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    out = image.copy()
    w, h = out.size
    size = max(8, round(h * rng.uniform(0.09, 0.14)))
    word = str(rng.choice(_WORDS)).upper()
    x = round(w * rng.uniform(0.02, 0.2))
    _text(ImageDraw.Draw(out), (x, h - round(size * 1.4)), word, size, (255, 255, 255), stroke=(0, 0, 0))
    if rng.random() < 0.5:
        _text(ImageDraw.Draw(out), (x, round(size * 0.2)), str(rng.choice(_WORDS)).upper(), size,
              (255, 255, 255), stroke=(0, 0, 0))  # fmt: skip
    return out


def _sticker(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    out = image.copy()
    w, h = out.size
    side = np.sqrt(rng.uniform(0.04, 0.1) * w * h)
    x, y = rng.uniform(0, w - side), rng.uniform(0, h - side)
    box = (round(x), round(y), round(x + side), round(y + side))
    draw = ImageDraw.Draw(out)
    colour = _random_colour(rng)
    if rng.random() < 0.5:
        draw.ellipse(box, fill=colour, outline=(0, 0, 0), width=max(1, round(side / 20)))
        eye = side / 8  # a smiley
        for ex in (0.33, 0.62):
            cx, cy = x + side * ex, y + side * 0.35
            draw.ellipse((cx - eye / 2, cy - eye / 2, cx + eye / 2, cy + eye / 2), fill=(0, 0, 0))
    else:
        draw.rounded_rectangle(box, radius=round(side / 6), fill=colour)
        _text(draw, (box[0] + side * 0.1, box[1] + side * 0.3), str(rng.choice(_WORDS))[:4],
              round(side * 0.3), (0, 0, 0) if sum(colour) > 380 else (255, 255, 255))  # fmt: skip
    return out


def _rotate(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    angle = float(rng.uniform(3, 10) * rng.choice([-1, 1]))
    if rng.random() < 0.5:
        return image.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=_random_colour(rng))
    w, h = image.size
    out = image.rotate(angle, Image.Resampling.BICUBIC, expand=False)
    t = abs(np.sin(np.radians(angle)))  # crop away the corners the rotation emptied
    dx, dy = round(h * t * 0.6) + 1, round(w * t * 0.6) + 1
    return out.crop((dx, dy, w - dx, h - dy))


def _homography(out_pts: np.ndarray, in_pts: np.ndarray) -> tuple[float, ...]:
    """PIL's PERSPECTIVE coefficients mapping output points ``out_pts`` to input points ``in_pts``."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(out_pts, in_pts, strict=True):
        rows += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
        rhs += [u, v]
    return tuple(float(c) for c in np.linalg.solve(np.array(rows, np.float64), np.array(rhs, np.float64)))


def _perspective(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = image.size
    j = rng.uniform(0.04, 0.12, size=8) * np.array([w, h] * 4)
    quad = np.array([[j[0], j[1]], [w - j[2], j[3]], [w - j[4], h - j[5]], [j[6], h - j[7]]])
    frame = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
    if rng.random() < 0.5:  # the frame shrunk onto a quad inside the output: corners filled
        coeffs = _homography(quad, frame)
        return image.transform(image.size, Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BICUBIC,
                               fillcolor=_random_colour(rng))  # fmt: skip
    coeffs = _homography(frame, quad)  # a quad inside the input stretched to the frame
    return image.transform(image.size, Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BICUBIC)


def _color(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    out = ImageEnhance.Brightness(image).enhance(rng.uniform(0.65, 1.4))
    out = ImageEnhance.Contrast(out).enhance(rng.uniform(0.6, 1.5))
    out = ImageEnhance.Color(out).enhance(rng.uniform(0.3, 1.8))
    hsv = np.asarray(out.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(rng.uniform(-0.08, 0.08) * 255)) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def apply_edit(family: str, image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, int]:
    """``image`` under one edit of ``family`` and the JPEG quality to encode it at (0: the caller's)."""
    w, h = image.size
    if family == "combo":
        first, second = rng.choice(len(SINGLE_FAMILIES), 2, replace=False)
        out, q1 = apply_edit(SINGLE_FAMILIES[int(first)], image, rng)
        out, q2 = apply_edit(SINGLE_FAMILIES[int(second)], out, rng)
        return out, min(q for q in (q1, q2) if q) if (q1 or q2) else 0
    if family in ("pad_uniform", "pad_nonuniform"):
        return _pad(image, rng, family == "pad_uniform"), 0
    if family == "aspect":
        factor = float(rng.uniform(1.3, 1.8))
        size = (round(w * factor), h) if rng.random() < 0.5 else (w, round(h * factor))
        return image.resize(size, Image.Resampling.BICUBIC), 0
    if family == "rotate":
        return _rotate(image, rng), 0
    if family == "flip":
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 0
    if family == "perspective":
        return _perspective(image, rng), 0
    if family == "text_banner":
        return _banner(image, rng), 0
    if family == "watermark":
        return _watermark(image, rng), 0
    if family == "caption_burnt":
        return _caption(image, rng), 0
    if family == "sticker":
        return _sticker(image, rng), 0
    if family == "crop":
        area = rng.uniform(0.45, 0.75)
        aspect = rng.uniform(0.75, 1.33)
        cw, ch = min(w, round(w * np.sqrt(area * aspect))), min(h, round(h * np.sqrt(area / aspect)))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return image.crop((x, y, x + cw, y + ch)), 0
    if family == "rescale":
        factor = float(rng.uniform(0.6, 0.8) if rng.random() < 0.5 else rng.uniform(1.5, 2.5))
        return image.resize((round(w * factor), round(h * factor)), Image.Resampling.BICUBIC), 0
    if family == "jpeg_heavy":
        return image, int(rng.integers(15, 31))
    if family == "blur":
        return image.filter(ImageFilter.GaussianBlur(max(w, h) * rng.uniform(0.006, 0.016))), 0
    if family == "noise":
        noisy = np.asarray(image, np.float32) + rng.normal(0, rng.uniform(5, 12), (h, w, 3))
        return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), 0
    if family == "grayscale":
        return image.convert("L").convert("RGB"), 0
    if family == "color":
        return _color(image, rng), 0
    raise ValueError(f"unknown edit family {family!r}")
