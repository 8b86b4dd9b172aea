"""The arguments of the curation job, shared by ``copyguard curate`` and :func:`copyguard.pipelines.curate.run`.

Beam's own pipeline options pass through; :func:`check_beam_options` refuses an unknown or malformed one
before any work, with a one-line error naming the closest option.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Sequence
from typing import Any, NoReturn

from copyguard.common.cli_args import add_config_args, examples
from copyguard.common.errors import UsageError

__all__ = ["CURATE_EPILOG", "add_arguments", "check_beam_options", "job_arguments"]

CURATE_EPILOG = """\
Beam options pass straight through, e.g.:
  --runner DirectRunner --direct_num_workers 2 --direct_running_mode multi_processing
  --runner DataflowRunner --project P --region R --temp_location gs://B/tmp
  --runner FlinkRunner --flink_master HOST:8081 --environment_type LOOPBACK
  --runner SparkRunner --spark_master_url spark://HOST:7077
Exit codes: 0 done, 1 the job failed (e.g. the accounting invariant broke), 2 usage/config error.

""" + examples(
    "copyguard curate --input 'shards/{00000..00009}.tar' --output curated/",
    "copyguard curate --input 'new/*.tar' --reference curated/ --output curated_new/ --set curate.images.threshold=0.8",
    "copyguard curate --input 'gs://b/shards/*.tar' --output gs://b/curated --runner DataflowRunner --project P "
    "--region R --temp_location gs://b/tmp",
)


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
    add_config_args(parser, "curate", example="images.threshold=0.8")
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
