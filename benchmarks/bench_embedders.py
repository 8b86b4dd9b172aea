"""SSCD embedding throughput and copy-detection sanity for the packaged ONNX models (Pizzi et al., CVPR 2022).

    python -m benchmarks.bench_embedders [--quick] [--machine TAG] [--out DIR] [--images 32] [--repeats 3]
                                         [--batch-sizes 1,8,32]

Writes ``benchmarks/results/<machine>/embedders.json``: per model, images/s and ms/image for each batch size,
both end to end (64 px random photo crops, upscaled to 320 by the embedder) and model only (images already
320x320, so no resize); the session start time; and cosine similarities of each photo with its JPEG
re-encode and a mild crop (copies: should be > 0.75) and between different photos (should be low), at the
photos' native size and at 64 px. Times are the best of ``--repeats`` passes; the machine and the load
average at the start and end are recorded (:mod:`benchmarks.common`). About a minute on two cores.
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import time
from typing import Any

import numpy as np
from PIL import Image
from skimage import data

from benchmarks.common import (
    begin,
    finish,
    script_main,
    usable_cpus,
)
from copyguard.curation.embedders import embedder_info, load_embedder

log = logging.getLogger("benchmarks.bench_embedders")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
MODELS = ("sscd-onnx", "sscd-distilled-onnx")


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _crop(image: np.ndarray, keep: float = 0.9) -> np.ndarray:
    h, w = image.shape[:2]
    dh, dw = int(h * (1 - keep) / 2), int(w * (1 - keep) / 2)
    return image[dh : h - dh, dw : w - dw]


def random_crops(photos: list[np.ndarray], count: int, size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """``count`` random square crops (30-100% of the short side) of the photos, resized to ``size``."""
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = int(rng.uniform(0.3, 1.0) * min(h, w))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crops.append(_resize(photo[y : y + side, x : x + side], size))
    return crops


def throughput(embedder, images: list[np.ndarray], batch_size: int, repeats: int) -> dict[str, float]:
    """Best (and median) of ``repeats`` timed passes over ``images``: the best is the least disturbed by
    other processes on a shared machine."""
    embedder.embed(images[:batch_size])  # warm-up at this batch shape
    passes = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(images), batch_size):
            embedder.embed(images[i : i + batch_size])
        passes.append((time.perf_counter() - start) / len(images))
    best, median = min(passes), float(np.median(passes))
    return {
        "images_per_s": round(1 / best, 2),
        "ms_per_image": round(1000 * best, 2),
        "ms_per_image_median": round(1000 * median, 2),
    }


def quality(embedder, photos: list[np.ndarray]) -> dict[str, Any]:
    """Cosines of copies (JPEG q75/q90, 90% centre crop) and of different photos, native and at 64 px."""
    out: dict[str, Any] = {}
    off_diagonal = ~np.eye(len(photos), dtype=bool)
    for label, images in (("native", photos), ("64px", [_resize(p, 64) for p in photos])):
        base = embedder.embed(images)
        result = {}
        for name, variant in (
            ("jpeg_q75", [_jpeg(p, 75) for p in images]),
            ("jpeg_q90", [_jpeg(p, 90) for p in images]),
            ("crop_90", [_crop(p) for p in images]),
        ):
            cos = (base * embedder.embed(variant)).sum(axis=1)
            result[name] = {"min": round(float(cos.min()), 3), "per_photo": [round(float(c), 3) for c in cos]}
        different = (base @ base.T)[off_diagonal]
        result["different_photos"] = {
            "max": round(float(different.max()), 3),
            "mean": round(float(different.mean()), 3),
        }
        out[label] = result
    return out


def run(
    machine: str,
    images: int,
    batch_sizes: list[int],
    threads: int | None,
    repeats: int,
    quick: bool = False,
    argv: list[str] | None = None,
) -> dict[str, Any]:
    report = begin("embedders", "benchmarks.bench_embedders", argv, machine, quick, threads or usable_cpus())
    photos = [getattr(data, name)() for name in PHOTOS]
    crops = random_crops(photos, images)
    full = [_resize(c, 320) for c in crops]
    results: dict[str, Any] = {}
    for kind in MODELS:
        embedder = load_embedder(kind, threads=threads)
        start = time.perf_counter()
        _ = embedder.dim  # builds the onnxruntime session
        session_s = time.perf_counter() - start
        log.info("%s: timing %d images at batch sizes %s", kind, images, batch_sizes)
        results[kind] = {
            "embedder": embedder_info(embedder),
            "session_start_s": round(session_s, 3),
            "end_to_end_64px": {str(b): throughput(embedder, crops, b, repeats) for b in batch_sizes},
            "model_only_320px": {str(b): throughput(embedder, full, b, repeats) for b in batch_sizes},
            "quality": quality(embedder, photos),
        }
    report.update(images_per_pass=images, repeats=repeats, photos=list(PHOTOS), models=results)
    return finish(report)


def _add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=32, help="images per timed pass")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per setting (best is reported)")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: all cores)")


def _summary(report: dict[str, Any]) -> str:
    return "\n".join(
        f"{kind}: "
        + ", ".join(f"bs{b}: {v['ms_per_image']} ms/img" for b, v in res["model_only_320px"].items())
        for kind, res in report["models"].items()
    )


def main(argv: list[str] | None = None) -> int:
    def measure(args: argparse.Namespace) -> dict[str, Any]:
        images, repeats = (4, 1) if args.quick else (args.images, args.repeats)
        batch_sizes = [1, 4] if args.quick else [int(b) for b in args.batch_sizes.split(",") if b.strip()]
        return run(args.machine, images, batch_sizes, args.threads, repeats, args.quick, argv)

    return script_main(argv, __doc__, "embedders", _add_args, measure, _summary)


if __name__ == "__main__":
    sys.exit(main())
