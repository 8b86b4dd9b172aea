"""CLI glue for ``copyguard curate`` and ``copyguard eval-dedup``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from copyguard.curation.errors import UsageError
from copyguard.curation.fileops import LocalFileOps, atomic_write, expand_paths
from copyguard.curation.manifest import read_manifest

__all__ = ["register"]

log = logging.getLogger(__name__)

CURATE_EPILOG = """\
Beam options pass straight through, e.g.:
  --runner DirectRunner --direct_num_workers 2 --direct_running_mode multi_processing
  --runner DataflowRunner --project P --region R --temp_location gs://B/tmp
  --runner FlinkRunner --flink_master HOST:8081 --environment_type LOOPBACK
  --runner SparkRunner --spark_master_url spark://HOST:7077
Exit codes: 0 done, 1 the job failed (e.g. the accounting invariant broke), 2 usage/config error.
"""


def _run_curate(args: argparse.Namespace, beam_args: list[str]) -> int:
    from copyguard.pipelines.curate import run

    argv = ["--input", args.input, "--output", args.output, *beam_args]
    if args.config:
        argv += ["--config", args.config]
    for item in args.overrides:
        argv += ["--set", item]
    if args.reference:
        argv += ["--reference", args.reference]
    if args.overwrite:
        argv.append("--overwrite")
    try:
        report = run(argv)
    except UsageError:
        raise
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
    out = args.out or (os.path.join(target, "eval.json") if os.path.isdir(target) else "eval.json")
    atomic_write(out, json.dumps(report, indent=2, sort_keys=True))
    print(f"wrote {out}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The job's own arguments (shared by the CLI and :func:`copyguard.pipelines.curate.run`)."""
    parser.add_argument(
        "--input", required=True, help="shard glob(s), comma-separated; local, gs:// or s3://"
    )
    parser.add_argument("--output", required=True, help="output directory (local, gs:// or s3://)")
    parser.add_argument(
        "--reference", default=None, metavar="PREV_OUT", help="an earlier run's output to dedup against"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the outputs of an earlier run in OUTPUT"
    )


def register(sub: argparse._SubParsersAction) -> None:
    from copyguard.pipelines.cli import add_config_args

    curate = sub.add_parser(
        "curate",
        help="deduplicate shards (MinHash captions, SSCD+FAISS images) with Apache Beam",
        description="Curate WebDataset shards: reject bad samples, deduplicate captions and images, write "
        "cleaned shards, a manifest of every sample's fate, a training-set index and a report.",
        epilog=CURATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(curate)
    add_config_args(curate, "curate")
    curate.set_defaults(func=_run_curate, accepts_extra=True)

    ev = sub.add_parser(
        "eval-dedup",
        help="score a curation manifest against a ground truth (pairwise P/R/F1, ARI)",
        description="Pairwise precision, recall, F1 and ARI for captions, images and the joint decision, "
        "with a breakdown by planted kind.",
    )
    ev.add_argument(
        "--manifest", required=True, help="curation output dir (or its manifest dir / Parquet files)"
    )
    ev.add_argument("--truth", required=True, help="ground_truth.jsonl from sample-data")
    ev.add_argument("--out", default=None, help="where to write the JSON (default: OUT/eval.json)")
    ev.set_defaults(func=_run_eval)
