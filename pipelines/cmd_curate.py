"""CLI glue for ``copyguard curate`` and ``copyguard eval-dedup``."""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from copyguard.common.cli_args import add_config_args
from copyguard.common.config import load_config
from copyguard.common.errors import UsageError
from copyguard.common.fileops import LocalFileOps, atomic_write, expand_paths
from copyguard.curation.manifest import read_manifest

__all__ = ["add_arguments", "check_beam_options", "job_arguments", "register"]

log = logging.getLogger(__name__)

CURATE_EPILOG = """\
Beam options pass straight through, e.g.:
  --runner DirectRunner --direct_num_workers 2 --direct_running_mode multi_processing
  --runner DataflowRunner --project P --region R --temp_location gs://B/tmp
  --runner FlinkRunner --flink_master HOST:8081 --environment_type LOOPBACK
  --runner SparkRunner --spark_master_url spark://HOST:7077
Exit codes: 0 done, 1 the job failed (e.g. the accounting invariant broke), 2 usage/config error.
"""


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
    out = args.out or (os.path.join(target, "eval.json") if os.path.isdir(target) else "eval.json")
    atomic_write(out, json.dumps(report, indent=2, sort_keys=True))
    print(f"wrote {out}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The job's own arguments (shared by the CLI and the argv parser :func:`copyguard.pipelines.curate.run`)."""
    parser.add_argument(
        "--input", required=True, help="shard glob(s), comma-separated; local, gs:// or s3://"
    )
    parser.add_argument("--output", required=True, help="output directory (local, gs:// or s3://)")
    parser.add_argument(
        "--reference", default=None, metavar="PREV_OUT", help="an earlier run's output to dedup against"
    )
    parser.add_argument(
        "--exclude-keys",
        default=None,
        metavar="FILE",
        help="drop these keys and their duplicate groups (one key per line, or train's filtered.jsonl)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the outputs of an earlier run in OUTPUT"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted run in OUTPUT (its partial outputs are cleared and the job reruns); "
        "a finished OUTPUT is left as it is",
    )


def job_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The typed keyword arguments of :func:`copyguard.pipelines.curate.run_curation` from the parsed
    :func:`add_arguments` (``inputs``, ``output``, ``reference``, ``exclude_keys``, ``overwrite``, ``resume``)."""
    return {
        "inputs": args.input,
        "output": args.output,
        "reference": args.reference,
        "exclude_keys": args.exclude_keys,
        "overwrite": args.overwrite,
        "resume": args.resume,
    }


def _job_option_names() -> list[str]:
    """The option strings of the job itself (``--input``, ``--config``...), for "did you mean"."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    add_config_args(parser, "curate")
    return [name for action in parser._actions for name in action.option_strings]


def _beam_parser() -> argparse.ArgumentParser:
    """A parser holding every option of every loaded ``PipelineOptions`` subclass (as Beam builds its own
    in ``PipelineOptions.get_all_options``), whose errors are one-line UsageErrors."""
    from apache_beam.options import pipeline_options as po

    class _Parser(po._BeamArgumentParser):
        def error(self, message: str) -> NoReturn:
            raise UsageError(f"Beam option {message.removeprefix('argument ')}")

    parser = _Parser(allow_abbrev=False, add_help=False)
    subset: dict[str, type] = {}
    for cls in po.PipelineOptions.__subclasses__():
        subset.setdefault(str(cls), cls)
    for cls in subset.values():
        cls._add_argparse_args(parser)
    return parser


def check_beam_options(beam_args: Sequence[str]) -> list[str]:
    """Check the arguments left over for Beam before any work: each must be a Beam pipeline option with a
    valid value (``--direct_num_workers abc`` is an error), else a one-line :class:`UsageError` naming the
    closest job or Beam option (``--refrence`` -> "did you mean --reference?"). Returns them unchanged."""
    args = list(beam_args)
    if not args:
        return args
    parser = _beam_parser()
    _, unknown = parser.parse_known_args(args)
    for token in unknown:
        if token == "--":
            continue
        if not token.startswith("-"):
            raise UsageError(f"unexpected argument {token!r} (options look like --name VALUE)")
        name = token.split("=", 1)[0]
        known = _job_option_names() + [s for a in parser._actions for s in a.option_strings]
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UsageError(f"unknown option {name}{hint}; see copyguard curate --help")
    return args


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
