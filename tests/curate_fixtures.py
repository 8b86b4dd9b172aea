"""A small curation input with known duplicates and one of every bad input the job must account for."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers import jpeg_bytes, write_tar

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "page")


def photo(name: str, size: int = 64) -> Image.Image:
    import skimage.data

    arr = getattr(skimage.data, name)()
    img = Image.fromarray(arr if arr.ndim == 3 else np.stack([arr] * 3, -1)).convert("RGB")
    return img.resize((size, size), Image.Resampling.BICUBIC)


def encode(img: Image.Image, quality: int = 90, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=quality)
    return buf.getvalue()


def good_members() -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """Two shards of valid samples. Image groups: {a0, a1(jpeg q60), b2(exact)}; caption groups: {c0, c1}."""
    astro = photo("astronaut")
    shard_a = [
        ("a0.jpg", encode(astro)),
        ("a0.txt", b"An astronaut in a white suit poses in front of a flag"),
        ("a1.jpg", encode(astro, quality=60)),
        ("a1.txt", b"<script>alert('x')</script> A portrait of a space traveller with the flag"),
        ("c0.jpg", encode(photo("coffee"))),
        ("c0.txt", b"A cup of coffee on a saucer next to a spoon on a table"),
        ("u0.jpg", encode(photo("rocket"))),
        ("u0.txt", b"A rocket on the launch pad before the flight"),
        ("u1.jpg", encode(photo("coins"))),
        ("u1.txt", b"Old coins laid out in rows on a grey background"),
    ]
    shard_b = [
        ("b2.jpg", encode(astro)),
        ("b2.txt", b"Photo of a woman astronaut smiling, official nasa portrait"),
        ("c1.jpg", encode(photo("chelsea"))),
        ("c1.txt", b"A cup of coffee on a saucer next to a spoon on a table."),
        ("u2.jpg", encode(photo("camera"))),
        ("u2.txt", b"A man with a camera on a tripod in a park"),
        ("u3.jpg", encode(photo("moon"))),
        ("u3.txt", b"The surface of the moon with craters seen up close"),
    ]
    return shard_a, shard_b


def build_inputs(root: Path) -> dict[str, str]:
    """Write the shards; returns ``{key: expected reason}`` for the bad inputs."""
    root.mkdir(parents=True, exist_ok=True)
    shard_a, shard_b = good_members()
    good = jpeg_bytes(5, size=64)
    big = encode(Image.new("RGB", (400, 400), (30, 60, 90)), fmt="PNG")
    bad = [
        ("x_corrupt.jpg", good[: len(good) // 2]),
        ("x_corrupt.txt", b"a corrupt jpeg"),
        ("x_nocap.jpg", good),
        ("x_noimg.txt", b"a caption with no image"),
        ("x_utf8.jpg", good),
        ("x_utf8.txt", b"caf\xe9 \xff"),
        ("x_empty.jpg", good),
        ("x_empty.txt", b"   "),
        ("x_zero.jpg", b""),
        ("x_zero.txt", b"a zero byte image"),
        ("x_big.png", big),
        ("x_big.txt", b"an image over the pixel limit"),
        ("../x_escape.jpg", good),
        ("../x_escape.txt", b"path traversal"),
        ("u1.jpg", good),  # same key as a sample of shard a: duplicate across shards
        ("u1.txt", b"duplicate key across shards"),
        ("x_twice.jpg", encode(photo("immunohistochemistry"))),
        ("x_twice.txt", b"Stained tissue under a microscope, brown and blue"),
        ("x_mid.jpg", encode(photo("clock"))),
        ("x_mid.txt", b"A wall clock with roman numerals"),
        ("x_twice.jpg", good),  # same key again in the same shard
        ("x_twice.txt", b"second"),
    ]
    write_tar(root / "a.tar", shard_a)
    write_tar(root / "b.tar", shard_b)
    write_tar(root / "c_bad.tar", bad)
    with tarfile.open(root / "d_empty.tar", "w"):
        pass
    trunc = write_tar(
        root / "e_trunc.tar",
        [
            ("t0.jpg", encode(photo("hubble_deep_field"))),
            ("t0.txt", b"galaxies in deep space"),
            ("t1.jpg", jpeg_bytes(9, 256)),
            ("t1.txt", b"cut"),
        ],
    )
    data = trunc.read_bytes()
    trunc.write_bytes(data[: data.index(b"t1.jpg") + 1500])
    return {
        "x_corrupt": "corrupt_image",
        "x_nocap": "missing_caption",
        "x_noimg": "missing_image",
        "x_utf8": "non_utf8_caption",
        "x_empty": "empty_caption",
        "x_zero": "empty_file",
        "x_big": "image_too_large",
        "../x_escape": "unsafe_member_name",
        "x_twice": "duplicate_key",
        "u1": "duplicate_key",
        "shard:d_empty.tar": "empty_shard",
        "t1": "truncated_tar",
    }


def day2_shard(root: Path) -> Path:
    """A later day's shard: a resized astronaut copy captioned exactly as the kept ``a0`` (a duplicated
    caption over duplicated images: the reference entry's group size and y_N support must grow), and a
    new unique image."""
    members = [
        ("n0.jpg", encode(photo("astronaut", 96), quality=80)),
        ("n0.txt", b"An astronaut in a white suit poses in front of a flag"),
        ("n1.jpg", encode(photo("page"))),
        ("n1.txt", b"A printed page of old text in a book"),
    ]
    root.mkdir(parents=True, exist_ok=True)
    return write_tar(root / "day2.tar", members)


TEMPLATE = b"Shaw Floors Caress Quiet Comfort Deep Indigo carpet sample 00424"


def template_shards(root: Path) -> tuple[Path, Path]:
    """Two days, three distinct images each, all with one informative caption (a template over six
    image groups once both days are seen, none on day one alone)."""
    root.mkdir(parents=True, exist_ok=True)
    day1 = [
        (f"t{i}.{ext}", data)
        for i, name in enumerate(("coffee", "rocket", "camera"))
        for ext, data in (("jpg", encode(photo(name))), ("txt", TEMPLATE))
    ]
    day2 = [
        (f"s{i}.{ext}", data)
        for i, name in enumerate(("coins", "moon", "clock"))
        for ext, data in (("jpg", encode(photo(name))), ("txt", TEMPLATE))
    ]
    return write_tar(root / "tmpl1.tar", day1), write_tar(root / "tmpl2.tar", day2)
