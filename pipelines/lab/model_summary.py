"""The lab model's memorization figures: train (or reuse) a lab model and record its model card's numbers.

    python -m copyguard.pipelines.lab.model_summary [--quick] [--machine TAG] [--out DIR] [--preset small]
        [--retrain] [--cache DIR]

Uses :func:`copyguard.pipelines.lab.cache.cached_lab_model`: the ``small`` model is trained once (15-20 CPU
minutes) into ``.cache/copyguard`` and reused by the demo and the other lab experiments; ``--retrain``
trains it again from scratch into the cache. ``--quick`` does the same with the ``tiny`` model (about 3.5
minutes the first time; the other ``--quick`` runs reuse it). Records per duplication count the SSCD / nL2
figures, the >= 25-copy summary, the first-step magnitude AUC, FID, the threshold calibration, training
time and the machine, in ``benchmarks/results/<machine>/lab_model.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

from copyguard.pipelines.lab.cache import DEFAULT_CACHE, cached_lab_model
from copyguard.pipelines.lab.results import (
    add_result_args,
    begin_result,
    finish_result,
    setup_logging,
    write_result,
)

__all__ = ["main", "summarize"]

log = logging.getLogger(__name__)
MODULE = "copyguard.pipelines.lab.model_summary"
GOAL_SHARE_MIN = 60.0  # % of >= 25-copy generations over the threshold
GOAL_UNIQUE_MAX = 2.0


def summarize(model: Path) -> dict[str, Any]:
    """The figures of a measured lab model folder (its memorization.json and lab_training.json)."""
    mem = json.loads((model / "memorization.json").read_text(encoding="utf-8"))
    training = json.loads((model / "lab_training.json").read_text(encoding="utf-8"))
    over = f"pct_gt_{mem['threshold']:g}"
    dup_key = next(k for k in mem if k.startswith("dup_ge"))
    unique = mem["by_copies"].get("unique", {}).get("sscd_own", {})
    return {
        "threshold": mem["threshold"],
        "eval": mem["eval"],
        "by_copies": {
            k: {"prompts": v["prompts"], **v["sscd_own"], "nl2": v["nl2"]}
            for k, v in mem["by_copies"].items()
        },
        "dup_ge25": mem[dup_key]["sscd_own"],
        "share_dup_ge25": mem[dup_key]["sscd_own"][over],
        "share_unique": unique.get(over),
        "magnitude": mem.get("magnitude"),
        "fid": mem.get("fid"),
        "calibration": mem.get("calibration"),
        "training": {
            "timings": training.get("timings"),
            "params": training.get("params"),
            "data": {k: v for k, v in training.get("data", {}).items() if k != "heldout_keys"},
            "machine": training.get("machine"),
        },
        "measure_timings": mem.get("timings"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_result_args(parser)
    parser.add_argument("--preset", default="small", choices=("tiny", "small", "gpu"))
    parser.add_argument("--retrain", action="store_true", help="train again instead of reusing the cache")
    parser.add_argument("--cache", default=str(DEFAULT_CACHE), help="lab model cache folder")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    report = begin_result("lab_model", MODULE, argv, args.machine, quick=args.quick)
    preset = "tiny" if args.quick else args.preset
    cache = Path(args.cache)
    if args.retrain:
        for old in cache.glob(f"lab-{preset}-*"):
            shutil.rmtree(old)
    model, data = cached_lab_model(preset, cache=cache)
    report["preset"] = preset
    report["model"] = str(model)
    report["data"] = str(data)
    report.update(summarize(model))
    report["goal"] = {"share_dup_ge25_min": GOAL_SHARE_MIN, "share_unique_max": GOAL_UNIQUE_MAX}
    report["passes"] = (
        report["share_dup_ge25"] >= GOAL_SHARE_MIN and (report["share_unique"] or 0) <= GOAL_UNIQUE_MAX
    )
    path = write_result(finish_result(report), args.out, args.machine, "lab_model")
    print(
        f"{preset}: >= 25 copies {report['share_dup_ge25']:.1f} % over {report['threshold']:g}, unique "
        f"{report['share_unique']:.1f} %, magnitude AUC {report['magnitude'].get('auc')}; wrote {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
