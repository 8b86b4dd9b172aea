"""Dedup accuracy of the curation job against the sample data's planted ground truth (Broder, 1997; Pizzi et al., CVPR 2022; Johnson et al., 2019).

    python -m benchmarks.bench_dedup [--quick] [--machine TAG] [--out DIR] [--preset small] [--seed 0]

1. Build the bundled sample data (``copyguard sample-data --preset small``; ``--quick``: ``tiny``) in a
   temporary folder: real photographs and captions with planted image edits (exact, JPEG, resize, crop,
   colour, overlay), caption edits (case, punctuation, words, exact) and duplicated image-caption pairs.
2. Run ``copyguard curate`` on it with the shipped config (default in-process runner, SSCD embedder).
3. Score the manifest with :func:`copyguard.curation.evaluate.evaluate_manifest` (what ``eval-dedup``
   prints): pairwise precision, recall and F1 for caption groups, image groups and the joint decision,
   and per planted kind the pair precision, pair recall and pair F1.

Writes ``benchmarks/results/<machine>/dedup.json``. About 2 minutes at ``small`` on two cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import begin, finish, script_main
from copyguard.common.config import load_config
from copyguard.common.fileops import LocalFileOps, expand_paths
from copyguard.curation.evaluate import evaluate_manifest
from copyguard.curation.manifest import read_manifest
from copyguard.pipelines.lab.config import SampleDataConfig
from copyguard.pipelines.lab.sample_data import build_sample_data

log = logging.getLogger("benchmarks.bench_dedup")
GOAL_F1 = 0.95


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run(tag: str, preset: str, seed: int, quick: bool, argv: list[str] | None) -> dict[str, Any]:
    """Build the data, curate it, score the manifest; returns the result document."""
    from copyguard.pipelines.curate import run as curate_run

    report = begin("dedup", "benchmarks.bench_dedup", argv, tag, quick=quick)
    with tempfile.TemporaryDirectory(prefix="copyguard-bench-dedup-") as tmp:
        data, out = Path(tmp) / "data", Path(tmp) / "curated"
        cfg = load_config(
            SampleDataConfig,
            "sample_data",
            None,
            [f"sample_data.preset={preset}", f"sample_data.seed={seed}"],
        )
        summary = build_sample_data(cfg, data, overwrite=True)
        start = time.perf_counter()
        job = curate_run(["--input", str(data / "*.tar"), "--output", str(out), "--overwrite"])
        seconds = time.perf_counter() - start
        rows = read_manifest(expand_paths(str(out / "manifest" / "*.parquet")), LocalFileOps())
        scores = evaluate_manifest(rows, _read_jsonl(data / "ground_truth.jsonl"))
    report["data"] = {
        "preset": preset,
        "seed": seed,
        "samples": summary["samples"],
        "kinds": summary["kinds"],
    }
    report["curate"] = {
        "seconds": round(seconds, 1),
        "by_status": job["by_status"],
        "invariant_holds": job["invariant_holds"],
    }
    report["scores"] = scores
    report["summary"] = {
        part: {k: round(scores[part][k], 4) for k in ("precision", "recall", "f1")}
        for part in ("captions", "images", "joint")
    }
    report["goal"] = {"f1_min": GOAL_F1}
    report["passes"] = all(report["summary"][p]["f1"] >= GOAL_F1 for p in ("captions", "images"))
    return finish(report)


def _add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="small", help="sample-data preset (default small; --quick: tiny)")
    parser.add_argument("--seed", type=int, default=0, help="sample-data seed")


def _summary(report: dict[str, Any]) -> str:
    s = report["summary"]
    return " ".join(f"{p}: P {s[p]['precision']:.3f} R {s[p]['recall']:.3f} F1 {s[p]['f1']:.3f}" for p in s)


def main(argv: list[str] | None = None) -> int:
    def measure(args: argparse.Namespace) -> dict[str, Any]:
        return run(args.machine, "tiny" if args.quick else args.preset, args.seed, args.quick, argv)

    return script_main(argv, __doc__, "dedup", _add_args, measure, _summary)


if __name__ == "__main__":
    sys.exit(main())
