"""SSCD embedding throughput and copy-detection sanity for the packaged ONNX models (Pizzi et al., CVPR 2022).

    python -m benchmarks.bench_embedders [--quick] [--machine TAG] [--out DIR] [--images 32] [--repeats 3]
                                         [--batch-sizes 1,8,32] [--threads N]

Method: docs/benchmark-methods.md#bench_embedders. Writes ``benchmarks/results/<machine>/embedders.json``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

import numpy as np
from PIL import Image
from skimage import data

from benchmarks.common import begin, finish, script_main, usable_cpus
from copyguard.common.timing import throughput
from copyguard.curation.embedders import embedder_info, load_embedder
from copyguard.pipelines.lab.sample_images import decode, encode_jpeg

log = logging.getLogger("benchmarks.bench_embedders")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
MODELS = ("sscd-onnx", "sscd-distilled-onnx")


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))


def _crop(image: np.ndarray, keep: float = 0.9) -> np.ndarray:
    dh, dw = (int(s * (1 - keep) / 2) for s in image.shape[:2])
    return image[dh : image.shape[0] - dh, dw : image.shape[1] - dw]


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


def quality(embedder, photos: list[np.ndarray]) -> dict[str, Any]:
    """Cosines of copies (JPEG q75/q90, 90% centre crop) and of different photos, native and at 64 px."""
    out: dict[str, Any] = {}
    off_diagonal = ~np.eye(len(photos), dtype=bool)
    for label, images in (("native", photos), ("64px", [_resize(p, 64) for p in photos])):
        base = embedder.embed(images)
        result = {}
        for name, edit in (("jpeg_q75", 75), ("jpeg_q90", 90), ("crop_90", None)):
            variants = [_crop(p) if edit is None else np.asarray(decode(encode_jpeg(Image.fromarray(p), edit)))
                        for p in images]  # fmt: skip
            cos = (base * embedder.embed(variants)).sum(axis=1)
            result[name] = {"min": round(float(cos.min()), 3), "per_photo": [round(float(c), 3) for c in cos]}
        different = (base @ base.T)[off_diagonal]
        result["different_photos"] = {"max": round(float(different.max()), 3),
                                      "mean": round(float(different.mean()), 3)}  # fmt: skip
        out[label] = result
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    images, repeats = (4, 1) if args.quick else (args.images, args.repeats)
    batch_sizes = [1, 4] if args.quick else [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    report = begin("embedders", "benchmarks.bench_embedders", args.argv, args.machine, args.quick,
                   args.threads or usable_cpus())  # fmt: skip
    photos = [getattr(data, name)() for name in PHOTOS]
    crops = random_crops(photos, images)
    full = [_resize(c, 320) for c in crops]
    results: dict[str, Any] = {}
    for kind in MODELS:
        embedder = load_embedder(kind, threads=args.threads)
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
    best = {
        k: max(v["images_per_s"] for v in r["model_only_320px"].values()) for k, r in report["models"].items()
    }
    return ", ".join(f"{kind}: up to {ips} images/s (model only)" for kind, ips in best.items())


def main(argv: list[str] | None = None) -> int:
    return script_main(argv, __doc__, "embedders", _add_args, measure, _summary)


if __name__ == "__main__":
    sys.exit(main())
