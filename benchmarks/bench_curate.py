"""End-to-end curation throughput against pure SSCD embedding, and the dedup accuracy of the same run.

    python -m benchmarks.bench_curate [--quick] [--machine TAG] [--out DIR] [--preset small] [--seed 0]
                                      [--rounds 3] [--data DIR] [--embedder sscd-onnx|sscd-distilled-onnx|null]

Method: docs/benchmark-methods.md#bench_curate. Writes ``benchmarks/results/<machine>/curate.json`` and, on
sample data with the job's own embedder, ``dedup.json`` (the last round's manifest against the ground truth).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import begin, finish, load_average, script_main, write_result
from copyguard.common.config import load_config
from copyguard.common.fileops import LocalFileOps, expand_paths
from copyguard.curation.captions import caption_groups
from copyguard.curation.clustering import cluster_embeddings
from copyguard.curation.config import CurateConfig
from copyguard.curation.embedders import load_embedder
from copyguard.curation.evaluate import evaluate_manifest
from copyguard.curation.manifest import read_manifest
from copyguard.curation.records import Sample
from copyguard.curation.shards import iter_samples
from copyguard.pipelines import curate_graph, embed_handler
from copyguard.pipelines.curate import run as curate_run
from copyguard.pipelines.lab.config import SampleDataConfig
from copyguard.pipelines.lab.sample_data import GROUND_TRUTH, build_sample_data

log = logging.getLogger("benchmarks.bench_curate")
GOAL_RATIO, GOAL_F1 = 0.8, 0.95
NULL = "null"


class NullEmbedder:
    """A trivial embedder: a unit vector seeded by the CRC-32 of the image bytes, no decoding, no model."""

    name, dim, input_size = NULL, 512, 320
    preprocessing = {"kind": "crc32-seeded random unit vector (benchmark only)"}

    def embed_bytes(self, blobs, max_pixels: int = 0) -> np.ndarray:
        rng = np.random.default_rng
        rows = np.stack([rng(zlib.crc32(b)).standard_normal(self.dim).astype(np.float32) for b in blobs])
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


RECORD: dict[str, Any] = {"batches": [], "seconds": 0.0}  # the job's embedder calls, see _recorded


def _recorded(embedder: Any) -> Any:
    """``embedder`` with ``embed_bytes`` wrapped: each batch's size and the seconds spent go to RECORD."""
    inner = embedder.embed_bytes

    def embed_bytes(blobs, max_pixels: int = 0) -> np.ndarray:
        start = time.perf_counter()
        out = inner(blobs, max_pixels=max_pixels)
        RECORD["seconds"] += time.perf_counter() - start
        RECORD["batches"].append(len(blobs))
        return out

    embedder.embed_bytes = embed_bytes
    return embedder


def make_embedder(kind: str, cfg: CurateConfig, trim_borders: bool = True) -> Any:
    """The job's embedder (border trimming on, as the job runs it) or, for the bound, the bare model."""
    i = cfg.images
    if kind == NULL:
        return NullEmbedder()
    return load_embedder(kind, path=i.embedder_path, input_size=i.input_size, trim_borders=trim_borders)


@contextlib.contextmanager
def patched_job_embedder(kind: str, cfg: CurateConfig):
    """The job's RunInference handler (and the index step, for ``null``) use ``kind``, recorded: the default
    runner executes the job in this process."""
    saved = embed_handler.load_embedder, curate_graph.load_embedder
    embed_handler.load_embedder = lambda *a, **k: _recorded(make_embedder(kind, cfg))
    if kind == NULL:
        curate_graph.load_embedder = lambda *a, **k: NullEmbedder()
    try:
        yield
    finally:
        embed_handler.load_embedder, curate_graph.load_embedder = saved


def read_valid(pattern: str, cfg: CurateConfig) -> list[Sample]:
    """The samples the job will embed: every record of the shards that is not a rejection."""
    return [r for r in iter_samples(pattern, cfg.io.max_pixels) if isinstance(r, Sample)]


def time_pure(kind: str, blobs: list[bytes], cfg: CurateConfig) -> tuple[dict[str, Any], np.ndarray]:
    """Embed ``blobs`` in batches of ``images.batch_size`` with the bare model (no border trimming, so the
    trimming's cost counts against the pipeline); returns timing and the descriptors."""
    embedder, bs = make_embedder(kind, cfg, trim_borders=False), cfg.images.batch_size
    _ = embedder.dim  # builds the onnxruntime session before the clock starts
    load, start = load_average(), time.perf_counter()
    parts = [embedder.embed_bytes(blobs[i : i + bs], cfg.io.max_pixels) for i in range(0, len(blobs), bs)]
    s = time.perf_counter() - start
    timing = {"seconds": round(s, 2), "images_per_s": round(len(blobs) / s, 2), "load_average_before": load}
    return timing, np.concatenate(parts)


def time_pipeline(kind: str, pattern: str, output: Path, cfg: CurateConfig, images: int) -> dict[str, Any]:
    """Run the whole curation job once (default in-process runner) and time it."""
    RECORD.update(batches=[], seconds=0.0)
    load = load_average()
    with patched_job_embedder(kind, cfg):
        start = time.perf_counter()
        report = curate_run(["--input", pattern, "--output", str(output), "--overwrite"])
        s = time.perf_counter() - start
    model_s, sizes = RECORD["seconds"], sorted(Counter(RECORD["batches"]).items())
    return {"seconds": round(s, 2), "images_per_s": round(images / s, 2), "load_average_before": load,
            "model_s": round(model_s, 2), "outside_model_s": round(s - model_s, 2),
            "batches": len(RECORD["batches"]), "batch_sizes": {str(k): v for k, v in sizes},
            "by_status": report["by_status"], "invariant_holds": report["invariant_holds"]}  # fmt: skip


def stage_breakdown(pattern: str, output: Path, samples: list, emb: np.ndarray, cfg: CurateConfig) -> dict:
    """The job with a trivial embedder, and the plain in-memory stages, each timed once."""
    out: dict[str, Any] = {}
    out["pipeline_with_null_embedder_s"] = time_pipeline(NULL, pattern, output, cfg, len(samples))["seconds"]
    keys, start = [s.key for s in samples], time.perf_counter()
    read_valid(pattern, cfg)
    out["read_shards_s"] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    groups = caption_groups(keys, [s.caption for s in samples], cfg.minhash)
    out["caption_minhash_groups_s"] = round(time.perf_counter() - start, 3)
    out["caption_groups_with_duplicates"] = len({g for k, g in groups.items() if g != k})
    start = time.perf_counter()
    image_groups = cluster_embeddings(keys, emb, cfg.images)
    out["faiss_cluster_s"] = round(time.perf_counter() - start, 3)
    out["image_groups"] = len(set(image_groups))
    return out


def score_dedup(report: dict, folder: Path, output: Path, pipe: dict, built: dict) -> dict:
    """``report`` (a :func:`begin` header) with the manifest in ``output`` scored against the ground truth."""
    rows = read_manifest(expand_paths(str(output / "manifest" / "*.parquet")), LocalFileOps())
    lines = (folder / GROUND_TRUTH).read_text("utf-8").splitlines()
    truth = [json.loads(line) for line in lines if line.strip()]
    scores = evaluate_manifest(rows, truth)
    parts = ("captions", "images", "joint")
    summary = {p: {k: round(scores[p][k], 4) for k in ("precision", "recall", "f1")} for p in parts}
    report.update(
        data={k: built[k] for k in ("preset", "seed", "samples", "kinds")},
        curate={"seconds": round(pipe["seconds"], 1), "by_status": pipe["by_status"],
                "invariant_holds": pipe["invariant_holds"]},
        scores=scores,
        summary=summary,
        goal={"f1_min": GOAL_F1},
        passes=all(summary[p]["f1"] >= GOAL_F1 for p in ("captions", "images")),
    )  # fmt: skip
    return finish(report)


def run(machine: str, preset: str, rounds: int, kind: str, data: str | None = None, breakdown: bool = True,
        quick: bool = False, argv: list[str] | None = None, seed: int = 0) -> tuple[dict, dict | None]:  # fmt: skip
    """The curate report and, on sample data, the dedup report of the last round's manifest."""
    report, dedup = (begin(n, "benchmarks.bench_curate", argv, machine, quick) for n in ("curate", "dedup"))
    cfg = load_config(CurateConfig, "curate")
    with tempfile.TemporaryDirectory(prefix="bench-curate-") as tmp:
        folder, output, built = Path(data or Path(tmp) / "data"), Path(tmp) / "out", None
        if not data:
            over = [f"sample_data.preset={preset}", f"sample_data.seed={seed}"]
            built = build_sample_data(load_config(SampleDataConfig, "sample_data", None, over), folder, True)
            built.update(preset=preset, seed=seed)
        samples = read_valid(str(folder / "*.tar"), cfg)
        blobs = [s.image for s in samples]
        log.info("%d valid images in %s; %d round(s) of pure / pipeline", len(blobs), folder, rounds)
        per_round, emb = [], np.zeros((0, 512), np.float32)
        for index in range(1, rounds + 1):  # alternated, so that both see the same machine load
            pure, emb = time_pure(kind, blobs, cfg)
            pipe = time_pipeline(kind, str(folder / "*.tar"), output, cfg, len(blobs))
            log.info("round %d: pure %.1f, pipeline %.1f images/s", index, pure["images_per_s"], pipe["images_per_s"])  # fmt: skip
            ratio = round(pipe["images_per_s"] / pure["images_per_s"], 3)
            per_round.append({"round": index, "pure": pure, "pipeline": pipe, "ratio": ratio})
        dedup = score_dedup(dedup, folder, output, per_round[-1]["pipeline"], built) if built else None
        stages = stage_breakdown(str(folder / "*.tar"), output, samples, emb, cfg) if breakdown else {}
    pure_ips, pipe_ips = ([r[p]["images_per_s"] for r in per_round] for p in ("pure", "pipeline"))
    ratio = statistics.median(r["ratio"] for r in per_round)
    share = statistics.median(r["pipeline"]["model_s"] / r["pipeline"]["seconds"] for r in per_round)
    b = built or {}
    report.update(
        data={"source": data or f"copyguard sample-data --preset {preset} --seed {seed}",
              "preset": None if data else preset, "valid_images": len(blobs), "inputs": b.get("samples"),
              "broken": b.get("broken"), "shards": b.get("shards")},
        settings={"embedder": kind, "batch_size": cfg.images.batch_size, "input_size": cfg.images.input_size,
                  "runner": "FnApiRunner (in-process, default options)", "rounds": rounds},
        rounds=per_round,
        summary={"pure_images_per_s_median": round(statistics.median(pure_ips), 2),
                 "pipeline_images_per_s_median": round(statistics.median(pipe_ips), 2),
                 "ratio_median": round(ratio, 3), "ratio_best": round(max(pipe_ips) / max(pure_ips), 3),
                 "model_share_median": round(share, 3), "goal_ratio": GOAL_RATIO, "passes": bool(ratio >= GOAL_RATIO)},
        breakdown=stages,
    )  # fmt: skip
    return finish(report), dedup


def _add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="small", help="sample-data preset (default small; --quick: tiny)")
    parser.add_argument("--seed", type=int, default=0, help="sample-data seed")
    parser.add_argument("--rounds", type=int, default=3, help="alternating pure/pipeline rounds")
    parser.add_argument("--data", default=None, help="use these shards (DIR/*.tar) instead of sample data")
    parser.add_argument("--embedder", default="sscd-onnx", help="sscd-onnx, sscd-distilled-onnx or null")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the stage breakdown")


def main(argv: list[str] | None = None) -> int:
    def measure(args: argparse.Namespace) -> dict[str, Any]:
        preset, rounds = ("tiny", 1) if args.quick else (args.preset, args.rounds)
        report, dedup = run(args.machine, preset, rounds, args.embedder, args.data, not args.no_breakdown,
                            args.quick, argv, args.seed)  # fmt: skip
        # the image scores mean something with the job's own embedder only
        if dedup and args.embedder == load_config(CurateConfig, "curate").images.embedder:
            write_result(dedup, args.out, args.machine, "dedup")
        return report

    def summary(r: dict[str, Any]) -> str:
        s = r["summary"]
        return (f"pure {s['pure_images_per_s_median']} images/s, pipeline {s['pipeline_images_per_s_median']} "
                f"images/s, ratio {s['ratio_median']} (goal >= {GOAL_RATIO}: {'pass' if s['passes'] else 'FAIL'})")  # fmt: skip

    return script_main(argv, __doc__, "curate", _add_args, measure, summary)


if __name__ == "__main__":
    sys.exit(main())
