"""Small builders for tests: real JPEG bytes and raw tar shards with arbitrary (also broken) members."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def jpeg_bytes(seed: int = 0, size: int = 32, quality: int = 90) -> bytes:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((size, size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]], gzip: bool = False) -> Path:
    """Write members as given (names are not sanitized: tests need unsafe ones)."""
    with tarfile.open(path, "w:gz" if gzip else "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
