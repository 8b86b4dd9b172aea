"""End-to-end curation throughput against pure SSCD embedding of the same images (Pizzi et al., CVPR 2022; Johnson et al., 2019; Broder, 1997).

    python -m benchmarks.bench_curate [--quick] [--machine TAG] [--out DIR] [--preset small] [--rounds 3]
                                      [--data DIR] [--embedder sscd-onnx|sscd-distilled-onnx|null]

Goal: the whole curation job runs at >= 0.8x the images/s of its embedder alone, i.e. reading, MinHash,
FAISS clustering, the policy, the index and the outputs cost at most 25% on top of the model.

1. Build the bundled sample data (``copyguard sample-data --preset small``: ~2,000 64 px JPEGs with
   planted duplicates and 30 broken samples, 5 shards) in a temporary folder, or use ``--data DIR``.
2. Read the valid samples once (the images the job embeds).
3. ``--rounds`` times, alternating so that both see the same machine load:
   - *pure*: ``load_embedder(kind).embed_bytes(batch)`` over those image bytes, in batches of the job's
     ``curate.images.batch_size`` (the onnxruntime session is built before the clock starts);
   - *pipeline*: ``copyguard.pipelines.curate.run([...])`` on the same shards with the shipped config and
     the default in-process runner, timed from the call to the written report.
   Throughput is valid images / wall seconds for both; the ratio is pipeline / pure per round, and the
   result the median of those ratios. During the pipeline runs the job's embedder is wrapped (one
   ``perf_counter`` per batch, nothing else) to record the batch sizes Beam's ``BatchElements`` chose and
   the seconds spent inside the model. Their share of the pipeline's wall time (*model share*) is the
   ratio the job would reach if its model ran exactly as fast as the pure runs: measured within one run,
   it does not move with the machine's load between runs the way the pure/pipeline ratio does.
4. Stage breakdown, once: the pipeline with the embedder replaced by a trivial one (vectors from a hash of
   the bytes, no decoding: the job's own overhead), and the plain functions in memory: reading the
   shards, caption MinHash groups, FAISS clustering of the real descriptors.

Writes ``benchmarks/results/<machine>/curate.json``. About 10 minutes with three rounds on two cores.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks.common import (
    begin,
    finish,
    load_average,
    script_main,
)
from copyguard.common.config import load_config
from copyguard.curation.captions import caption_groups
from copyguard.curation.clustering import cluster_embeddings
from copyguard.curation.config import CurateConfig
from copyguard.curation.embedders import load_embedder
from copyguard.curation.records import Sample
from copyguard.curation.shards import iter_samples
from copyguard.pipelines.lab.config import SampleDataConfig
from copyguard.pipelines.lab.sample_data import build_sample_data

log = logging.getLogger("benchmarks.bench_curate")
GOAL_RATIO = 0.8
NULL = "null"


class NullEmbedder:
    """A trivial embedder: a unit vector seeded by the CRC-32 of the image bytes, no decoding, no model."""

    name = NULL
    dim = 512
    input_size = 320
    preprocessing = {"kind": "crc32-seeded random unit vector (benchmark only)"}

    def embed(self, images):  # pragma: no cover - the job only calls embed_bytes
        raise NotImplementedError

    def embed_bytes(self, blobs, max_pixels: int = 0) -> np.ndarray:
        rows = np.stack(
            [np.random.default_rng(zlib.crc32(b)).standard_normal(self.dim).astype(np.float32) for b in blobs]
        )
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


class _Recording:
    """Wraps the job's embedder: records each batch's size and the seconds spent in ``embed_bytes``."""

    batches: list[int] = []
    seconds: float = 0.0

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def embed_bytes(self, blobs, max_pixels: int = 0) -> np.ndarray:
        start = time.perf_counter()
        out = self._inner.embed_bytes(blobs, max_pixels=max_pixels)
        _Recording.seconds += time.perf_counter() - start
        _Recording.batches.append(len(blobs))
        return out

    @classmethod
    def reset(cls) -> None:
        cls.batches, cls.seconds = [], 0.0


def make_embedder(kind: str, cfg: CurateConfig, trim_borders: bool = True) -> Any:
    """The job's embedder (border trimming on, as the job runs it) or, for the bound, the bare model."""
    if kind == NULL:
        return NullEmbedder()
    return load_embedder(
        kind, path=cfg.images.embedder_path, input_size=cfg.images.input_size, trim_borders=trim_borders
    )


@contextlib.contextmanager
def patched_job_embedder(kind: str, cfg: CurateConfig) -> Iterator[None]:
    """Make the job's RunInference handler (and the index step, for ``null``) use ``kind``, recorded.

    Works because the default runner executes the job in this process.
    """
    import copyguard.pipelines.curate_graph as steps
    import copyguard.pipelines.embed_handler as handler

    saved = handler.load_embedder, steps.load_embedder
    handler.load_embedder = lambda *a, **k: _Recording(make_embedder(kind, cfg))
    if kind == NULL:
        steps.load_embedder = lambda *a, **k: NullEmbedder()
    try:
        yield
    finally:
        handler.load_embedder, steps.load_embedder = saved


def build_data(preset: str, folder: Path) -> dict[str, Any]:
    """``copyguard sample-data --out folder --preset preset`` (seed 0)."""
    cfg = load_config(SampleDataConfig, "sample_data", None, [f"sample_data.preset={preset}"])
    return build_sample_data(cfg, folder, overwrite=True)


def read_valid(pattern: str, cfg: CurateConfig) -> list[Sample]:
    """The samples the job will embed: every record of the shards that is not a rejection."""
    return [r for r in iter_samples(pattern, cfg.io.max_pixels) if isinstance(r, Sample)]


def time_pure(kind: str, blobs: list[bytes], cfg: CurateConfig) -> tuple[dict[str, Any], np.ndarray]:
    """Embed ``blobs`` in batches of ``images.batch_size``; returns timing and the descriptors.

    The bound is SSCD alone: decode, resize, model, without the border trimming the job adds, so the
    trimming's cost counts against the pipeline (docs/curation.md, "Image copies").
    """
    embedder = make_embedder(kind, cfg, trim_borders=False)
    _ = embedder.dim  # builds the onnxruntime session before the clock starts
    bs = cfg.images.batch_size
    load = load_average()
    start = time.perf_counter()
    parts = [
        embedder.embed_bytes(blobs[i : i + bs], max_pixels=cfg.io.max_pixels)
        for i in tqdm(range(0, len(blobs), bs), desc="pure embedding", unit="batch", leave=False)
    ]
    seconds = time.perf_counter() - start
    result = {
        "seconds": round(seconds, 2),
        "images_per_s": round(len(blobs) / seconds, 2),
        "load_average_before": load,
    }
    return result, np.concatenate(parts)


def time_pipeline(kind: str, pattern: str, output: Path, cfg: CurateConfig, images: int) -> dict[str, Any]:
    """Run the whole curation job once (default in-process runner) and time it."""
    from copyguard.pipelines.curate import run as curate_run

    _Recording.reset()
    load = load_average()
    with patched_job_embedder(kind, cfg):
        start = time.perf_counter()
        report = curate_run(["--input", pattern, "--output", str(output), "--overwrite"])
        seconds = time.perf_counter() - start
    sizes = Counter(_Recording.batches)
    return {
        "seconds": round(seconds, 2),
        "images_per_s": round(images / seconds, 2),
        "load_average_before": load,
        "model_s": round(_Recording.seconds, 2),
        "outside_model_s": round(seconds - _Recording.seconds, 2),
        "batches": len(_Recording.batches),
        "batch_sizes": {str(k): v for k, v in sorted(sizes.items())},
        "by_status": report["by_status"],
        "invariant_holds": report["invariant_holds"],
    }


def stage_breakdown(
    pattern: str, output: Path, samples: list[Sample], emb: np.ndarray, cfg: CurateConfig
) -> dict[str, Any]:
    """The job with a trivial embedder, and the plain in-memory stages, each timed once."""
    out: dict[str, Any] = {}
    null = time_pipeline(NULL, pattern, output, cfg, len(samples))
    out["pipeline_with_null_embedder_s"] = null["seconds"]
    start = time.perf_counter()
    read_valid(pattern, cfg)
    out["read_shards_s"] = round(time.perf_counter() - start, 3)
    keys, captions = [s.key for s in samples], [s.caption for s in samples]
    start = time.perf_counter()
    groups = caption_groups(keys, captions, cfg.minhash)
    out["caption_minhash_groups_s"] = round(time.perf_counter() - start, 3)
    out["caption_groups_with_duplicates"] = len({g for k, g in groups.items() if g != k})
    start = time.perf_counter()
    image_groups = cluster_embeddings(keys, emb, cfg.images)
    out["faiss_cluster_s"] = round(time.perf_counter() - start, 3)
    out["image_groups"] = len(set(image_groups))
    return out


def run(
    machine: str,
    preset: str,
    rounds: int,
    kind: str,
    data: str | None = None,
    breakdown: bool = True,
    quick: bool = False,
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """The whole benchmark; returns the result dict (see the module docstring)."""
    report = begin("curate", "benchmarks.bench_curate", argv, machine, quick)
    cfg = load_config(CurateConfig, "curate")
    with tempfile.TemporaryDirectory(prefix="bench-curate-") as tmp:
        folder = Path(data) if data else Path(tmp) / "data"
        summary = None if data else build_data(preset, folder)
        pattern = str(folder / "*.tar")
        samples = read_valid(pattern, cfg)
        blobs = [s.image for s in samples]
        log.info("%d valid images in %s; %d round(s) of pure / pipeline", len(blobs), folder, rounds)
        per_round = []
        emb = np.zeros((0, 512), np.float32)
        for index in range(rounds):
            pure, emb = time_pure(kind, blobs, cfg)
            log.info("round %d pure: %.1f images/s", index + 1, pure["images_per_s"])
            pipe = time_pipeline(kind, pattern, Path(tmp) / "out", cfg, len(blobs))
            log.info(
                "round %d pipeline: %.1f images/s (model %.1f s of %.1f s)",
                index + 1,
                pipe["images_per_s"],
                pipe["model_s"],
                pipe["seconds"],
            )
            ratio = pipe["images_per_s"] / pure["images_per_s"]
            per_round.append({"round": index + 1, "pure": pure, "pipeline": pipe, "ratio": round(ratio, 3)})
        stages = stage_breakdown(pattern, Path(tmp) / "out", samples, emb, cfg) if breakdown else {}

    pure_ips = [r["pure"]["images_per_s"] for r in per_round]
    pipe_ips = [r["pipeline"]["images_per_s"] for r in per_round]
    ratio = statistics.median(r["ratio"] for r in per_round)
    report.update(
        data={
            "source": data or f"copyguard sample-data --preset {preset} --seed 0",
            "preset": None if data else preset,
            "valid_images": len(blobs),
            "inputs": summary["samples"] if summary else None,
            "broken": summary["broken"] if summary else None,
            "shards": summary["shards"] if summary else None,
        },
        settings={
            "embedder": kind,
            "batch_size": cfg.images.batch_size,
            "input_size": cfg.images.input_size,
            "runner": "FnApiRunner (in-process, default options)",
            "rounds": rounds,
        },
        rounds=per_round,
        summary={
            "pure_images_per_s_median": round(statistics.median(pure_ips), 2),
            "pipeline_images_per_s_median": round(statistics.median(pipe_ips), 2),
            "ratio_median": round(ratio, 3),
            "ratio_best": round(max(pipe_ips) / max(pure_ips), 3),
            "model_share_median": round(
                statistics.median(r["pipeline"]["model_s"] / r["pipeline"]["seconds"] for r in per_round), 3
            ),
            "goal_ratio": GOAL_RATIO,
            "passes": bool(ratio >= GOAL_RATIO),
        },
        breakdown=stages,
    )
    return finish(report)


def _add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="small", help="sample-data preset (default small; --quick: tiny)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating pure/pipeline rounds")
    parser.add_argument("--data", default=None, help="use these shards (DIR/*.tar) instead of sample data")
    parser.add_argument("--embedder", default="sscd-onnx", help="sscd-onnx, sscd-distilled-onnx or null")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the stage breakdown")


def _summary(report: dict[str, Any]) -> str:
    s = report["summary"]
    return (
        f"pure {s['pure_images_per_s_median']} images/s, pipeline {s['pipeline_images_per_s_median']} images/s, "
        f"ratio {s['ratio_median']} (goal >= {GOAL_RATIO}: {'pass' if s['passes'] else 'FAIL'})"
    )


def main(argv: list[str] | None = None) -> int:
    def measure(args: argparse.Namespace) -> dict[str, Any]:
        preset, rounds = ("tiny", 1) if args.quick else (args.preset, args.rounds)
        return run(
            args.machine, preset, rounds, args.embedder, args.data, not args.no_breakdown, args.quick, argv
        )

    return script_main(argv, __doc__, "curate", _add_args, measure, _summary)


if __name__ == "__main__":
    sys.exit(main())
