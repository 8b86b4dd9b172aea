"""CLI glue for ``copyguard curate`` and ``copyguard eval-dedup``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from copyguard.common.cli_args import add_config_args, add_option, examples
from copyguard.common.config import load_config
from copyguard.common.errors import UsageError
from copyguard.common.fileops import LocalFileOps, atomic_write, expand_paths
from copyguard.curation.manifest import read_manifest
from copyguard.pipelines.curate_args import CURATE_EPILOG, add_arguments, job_arguments

__all__ = ["register"]

log = logging.getLogger(__name__)


def _run_curate(args: argparse.Namespace, beam_options: list[str]) -> int:
    from copyguard.curation.config import CurateConfig
    from copyguard.pipelines.curate import AlreadyComplete, run_curation

    config = load_config(CurateConfig, "curate", args.config, list(args.overrides))
    try:
        report = run_curation(config, **job_arguments(args), beam_options=beam_options)
    except UsageError:
        raise
    except AlreadyComplete as done:  # --resume on a finished run: nothing to do
        print(f"{done.output}: already complete")
        return 0
    except Exception as exc:  # a failed pipeline: one line, exit 1 (the traceback is logged at debug level)
        log.debug("curation failed", exc_info=True)
        message = str(exc).strip().splitlines()
        print(f"copyguard curate: failed: {message[-1] if message else type(exc).__name__}", file=sys.stderr)
        return 1
    s = report["by_status"]
    print(
        f"curated {report['inputs']} samples: kept {s['kept']}, duplicate {s['duplicate']}, "
        f"rejected {s['rejected']} -> {args.output}"
    )
    return 0 if report["invariant_holds"] else 1


def _run_eval(args: argparse.Namespace) -> int:
    from copyguard.curation.evaluate import evaluate_manifest, format_report  # sklearn: import on use

    target = args.manifest
    paths = (
        expand_paths(os.path.join(target, "manifest", "*.parquet"))
        or expand_paths(os.path.join(target, "*.parquet"))
        or expand_paths(target)
    )
    if not paths:
        raise UsageError(f"no manifest Parquet files found under {target}")
    try:
        with open(args.truth, encoding="utf-8") as fh:
            truth = [json.loads(line) for line in fh if line.strip()]
    except OSError as exc:
        raise UsageError(f"cannot read ground truth {args.truth}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"ground truth {args.truth} is not JSON lines: {exc}") from None
    rows = read_manifest(paths, LocalFileOps())
    report = evaluate_manifest(rows, truth)
    print(format_report(report))
    out = args.output or (os.path.join(target, "eval.json") if os.path.isdir(target) else "eval.json")
    atomic_write(out, json.dumps(report, indent=2, sort_keys=True))
    print(f"wrote {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:

    curate = sub.add_parser(
        "curate",
        help="deduplicate shards (MinHash captions, SSCD+FAISS images) with Apache Beam",
        description="Curate WebDataset shards: reject bad samples, deduplicate captions and images, write "
        "cleaned shards, a manifest of every sample's fate, a training-set index and a report.",
        epilog=CURATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(curate)
    add_config_args(curate, "curate", example="images.threshold=0.8")
    curate.set_defaults(func=_run_curate, accepts_extra=True)

    ev = sub.add_parser(
        "eval-dedup",
        help="score a curation manifest against a ground truth (pairwise P/R/F1, ARI)",
        description="Pairwise precision, recall, F1 and ARI for captions, images and the joint decision, "
        "with a breakdown by planted kind.",
        epilog=examples("copyguard eval-dedup --manifest curated/ --truth sample/ground_truth.jsonl"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ev.add_argument(
        "--manifest", required=True, help="curation output dir (or its manifest dir / Parquet files)"
    )
    ev.add_argument("--truth", required=True, help="ground_truth.jsonl from sample-data")
    add_option(
        ev, "--output", old=["--out"], metavar="FILE", help="where to write the JSON (default: OUT/eval.json)"
    )
    ev.set_defaults(func=_run_eval)
