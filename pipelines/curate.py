"""``copyguard curate``: the Beam curation job (DirectRunner locally; Dataflow, Flink or Spark by flags).

    copyguard curate --input 'DIR/*.tar' --output OUT [--config configs/curate.yaml] [--set ...]
                     [--reference PREV_OUT] [--exclude-keys FILE] [--overwrite] [Beam pipeline options...]

Any argument the job does not know (``--runner``, ``--direct_num_workers``, ``--direct_running_mode``,
``--temp_location``, ``--project``...) goes straight to Beam's ``PipelineOptions``. Outputs under OUT:
``shards/`` (cleaned shards), ``manifest/`` (Parquet, one row per input sample), ``index/`` (the training-set
index) and ``report.json`` / ``report.html``. See :mod:`copyguard.pipelines.transforms` for the data flow.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from copyguard.common.cli_args import ArgumentParser, add_config_args
from copyguard.common.config import load_config
from copyguard.common.errors import UsageError
from copyguard.common.outputs import check_output_dir
from copyguard.curation.config import CurateConfig
from copyguard.pipelines.beam_io import BeamFileOps, match_inputs
from copyguard.pipelines.cmd_curate import add_arguments, check_beam_options, job_arguments

# The job's graph (partitioned image search, components, policy per component, sharded index), in its
# own module: build_pipeline(p, inputs, output, cfg, reference=None, exclude_keys=None).
from copyguard.pipelines.curate_graph import build_curation_graph as build_pipeline

__all__ = ["build_pipeline", "make_pipeline", "run", "run_curation"]

log = logging.getLogger(__name__)

OUTPUT_PARTS = ("shards", "manifest", "index", "report.json", "report.html")


def _existing_outputs(output: str) -> list[str]:
    """The parts of an earlier run in ``output``; an empty subfolder (left by a failed start) is none."""
    fs = BeamFileOps()
    found = []
    for part in OUTPUT_PARTS:
        path = fs.join(output, part)
        if not fs.exists(path):
            continue
        if part in ("shards", "manifest", "index"):
            (found_files,) = beam.io.filesystems.FileSystems.match([fs.join(path, "*")])
            if not found_files.metadata_list:
                continue
        found.append(part)
    return found


def _check_output(output: str, overwrite: bool) -> None:
    """Before any work, creating nothing: ``output`` is a writable folder (not a file) and holds no earlier
    run's outputs unless ``overwrite``. Mistakes are one-line UsageErrors."""
    check_output_dir(output, "--output")
    existing = _existing_outputs(output)
    if existing and not overwrite:
        raise UsageError(f"{output} already holds curation outputs ({', '.join(existing)}); pass --overwrite")


def _prepare_output(output: str, overwrite: bool) -> None:
    fs = BeamFileOps()
    _check_output(output, overwrite)
    existing = [part for part in OUTPUT_PARTS if fs.exists(fs.join(output, part))]
    for part in existing:
        path = fs.join(output, part)
        matches = beam.io.filesystems.FileSystems.match([fs.join(path, "*")])[0].metadata_list
        files = [m.path for m in matches] if part in ("shards", "manifest", "index") else [path]
        if files:
            beam.io.filesystems.FileSystems.delete(files)
    fs.makedirs(output)
    for sub in ("shards", "manifest", "index"):
        fs.makedirs(fs.join(output, sub))


def make_pipeline(beam_args: Sequence[str]) -> beam.Pipeline:
    """A pipeline from Beam arguments. No runner (or ``DirectRunner``) means Beam's in-process FnApiRunner,
    which honours ``--direct_running_mode``/``--direct_num_workers``. (Beam's DirectRunner would first try
    to download a Prism binary; copyguard never downloads at run time. Ask for ``--runner PrismRunner``
    explicitly to use Prism.)"""
    options = PipelineOptions(list(beam_args))
    options.view_as(SetupOptions).save_main_session = False
    runner = options.view_as(StandardOptions).runner
    if runner is None or runner.lower() in ("directrunner", "direct"):
        return beam.Pipeline(runner=FnApiRunner(), options=options)
    return beam.Pipeline(options=options)


def run_curation(
    config: CurateConfig,
    *,
    inputs: str | Sequence[str],
    output: str,
    reference: str | None = None,
    exclude_keys: str | None = None,
    overwrite: bool = False,
    beam_options: Sequence[str] = (),
    test_pipeline: beam.Pipeline | None = None,
) -> dict[str, Any]:
    """Run the curation job to completion and return ``report.json``'s content.

    ``inputs``: shard globs (a list, or one comma-separated string; local, ``gs://`` or ``s3://``).
    ``reference``: an earlier run's output to deduplicate against. ``exclude_keys``: a file of keys (one per
    line, or the trainer's ``filtered.jsonl``) dropped with their duplicate groups. ``overwrite``: replace the outputs of an
    earlier run in ``output`` (without it they are a UsageError). ``beam_options``: Beam pipeline arguments
    (``--runner``, ``--direct_num_workers``, ...), see :func:`make_pipeline`; ignored with ``test_pipeline``.
    """
    check_beam_options(beam_options)
    _check_output(output, overwrite)
    patterns = inputs if isinstance(inputs, str) else ",".join(inputs)
    shards = match_inputs(patterns)
    fs = BeamFileOps()
    if reference and not fs.exists(fs.join(reference, "index", "index.json")):
        raise UsageError(f"--reference {reference} holds no index/index.json from an earlier curation run")
    if exclude_keys and not fs.exists(exclude_keys):
        raise UsageError(f"--exclude-keys {exclude_keys}: no such file")
    p = test_pipeline if test_pipeline is not None else make_pipeline(beam_options)
    _prepare_output(output, overwrite)
    log.info("curating %d shard(s) into %s", len(shards), output)
    started = time.perf_counter()
    build_pipeline(p, shards, output, config, reference, exclude_keys=exclude_keys)
    result = p.run()
    result.wait_until_finish()
    with fs.open(fs.join(output, "report.json")) as stream:
        report = json.loads(stream.read())
    log.info(
        "curation done in %.1f s: %s (invariant %s)",
        time.perf_counter() - started,
        report["by_status"],
        "holds" if report["invariant_holds"] else "BROKEN",
    )
    return report


def run(argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> dict[str, Any]:
    """Apache Beam example style: parse ``argv`` (the job's arguments, ``--config``/``--set``, and Beam's
    pipeline options, which pass through), then :func:`run_curation`; returns ``report.json``'s content."""
    parser = ArgumentParser(prog="copyguard curate", add_help=False)
    add_arguments(parser)
    add_config_args(parser, "curate")
    args, beam_options = parser.parse_known_args(list(argv or []))
    config = load_config(CurateConfig, "curate", args.config, args.overrides)
    return run_curation(config, **job_arguments(args), beam_options=beam_options, test_pipeline=test_pipeline)
