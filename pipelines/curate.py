"""``copyguard curate``: the Beam curation job (DirectRunner locally; Dataflow, Flink or Spark by flags).

    copyguard curate --input 'DIR/*.tar' --output OUT [--config configs/curate.yaml] [--set ...]
                     [--reference PREV_OUT] [--exclude-keys FILE] [--overwrite] [Beam pipeline options...]

Any argument the job does not know (``--runner``, ``--direct_num_workers``, ``--direct_running_mode``,
``--temp_location``, ``--project``...) goes straight to Beam's ``PipelineOptions``. Outputs under OUT:
``shards/`` (cleaned shards), ``manifest/`` (Parquet, one row per input sample), ``index/`` (the training-set
index) and ``report.json`` / ``report.html``. See :mod:`copyguard.pipelines.transforms` for the data flow.

Interrupted runs: ``OUT/_INCOMPLETE`` is written before any output and replaced by ``OUT/_SUCCESS`` (a small
JSON: finish time and counts) as the very last step. An OUT holding ``_INCOMPLETE`` is refused unless
``--resume`` (which clears the partial outputs and runs the job again: the outputs are deterministic, so the
result equals an uninterrupted run) or ``--overwrite``; ``load_index`` refuses its ``index/``.
``--resume`` on a finished OUT does nothing.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from copyguard.common.cli_args import ArgumentParser, add_config_args
from copyguard.common.config import load_config
from copyguard.common.errors import UsageError
from copyguard.common.fileops import atomic_write
from copyguard.common.outputs import check_output_dir
from copyguard.common.runtime import package_version
from copyguard.curation.config import CurateConfig
from copyguard.curation.embedders import load_embedder
from copyguard.curation.index_format import INCOMPLETE_MARKER, SUCCESS_MARKER
from copyguard.pipelines.beam_io import BeamFileOps, match_inputs
from copyguard.pipelines.curate_args import add_arguments, check_beam_options, job_arguments

# The job's graph (partitioned image search, components, policy per component, sharded index), in its
# own module: build_pipeline(p, inputs, output, cfg, reference=None, exclude_keys=None).
from copyguard.pipelines.curate_graph import build_curation_graph as build_pipeline
from copyguard.pipelines.progress import log_totals

__all__ = ["build_pipeline", "make_pipeline", "run", "run_curation"]

log = logging.getLogger(__name__)

OUTPUT_PARTS = ("shards", "manifest", "index", "report.json", "report.html")


class AlreadyComplete(Exception):
    """``--resume`` on an OUT whose run finished: nothing to do (the CLI prints one line, exit 0)."""

    def __init__(self, output: str, report: dict[str, Any]) -> None:
        super().__init__(f"{output}: already complete")
        self.output = output
        self.report = report


def is_unfinished(output: str) -> bool:
    """``output`` holds a curation run that started and did not finish (``_INCOMPLETE`` is there)."""
    fs = BeamFileOps()
    return fs.exists(fs.join(output, INCOMPLETE_MARKER))


def is_finished(output: str) -> bool:
    fs = BeamFileOps()
    return not is_unfinished(output) and fs.exists(fs.join(output, SUCCESS_MARKER))


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


def _check_output(output: str, overwrite: bool, resume: bool = False) -> None:
    """Before any work, creating nothing: ``output`` is a writable folder (not a file) and holds no earlier
    run's outputs unless ``overwrite`` (or, for an unfinished run, ``resume``). Mistakes are one-line
    UsageErrors. A finished run with ``resume`` is :class:`AlreadyComplete` (checked by the caller)."""
    check_output_dir(output, "--output")
    if overwrite:
        return
    if is_unfinished(output):
        if not resume:
            raise UsageError(
                f"{output} holds an unfinished curation run (no {SUCCESS_MARKER}); pass --resume to finish it "
                "(or --overwrite)"
            )
        return
    existing = _existing_outputs(output)
    if existing:
        raise UsageError(f"{output} already holds curation outputs ({', '.join(existing)}); pass --overwrite")


def _prepare_output(output: str, overwrite: bool, resume: bool = False) -> None:
    fs = BeamFileOps()
    _check_output(output, overwrite, resume)
    if fs.exists(fs.join(output, SUCCESS_MARKER)):
        beam.io.filesystems.FileSystems.delete([fs.join(output, SUCCESS_MARKER)])
    existing = [part for part in OUTPUT_PARTS if fs.exists(fs.join(output, part))]
    for part in existing:
        path = fs.join(output, part)
        matches = beam.io.filesystems.FileSystems.match([fs.join(path, "*")])[0].metadata_list
        files = [m.path for m in matches] if part in ("shards", "manifest", "index") else [path]
        if part in ("shards", "manifest", "index"):  # hidden temp files of a killed run's atomic writes
            hidden = beam.io.filesystems.FileSystems.match([fs.join(path, ".*.tmp-*")])[0].metadata_list
            files += [m.path for m in hidden]
        if files:
            beam.io.filesystems.FileSystems.delete(files)
    if fs.exists(output):
        hidden = beam.io.filesystems.FileSystems.match([fs.join(output, ".*.tmp-*")])[0].metadata_list
        if hidden:
            beam.io.filesystems.FileSystems.delete([m.path for m in hidden])
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
    resume: bool = False,
    beam_options: Sequence[str] = (),
    test_pipeline: beam.Pipeline | None = None,
) -> dict[str, Any]:
    """Run the curation job to completion and return ``report.json``'s content.

        ``inputs``: shard globs (a list, or one comma-separated string; local, ``gs://`` or ``s3://``).
        ``reference``: an earlier run's output to deduplicate against. ``exclude_keys``: a file of keys (one per
        line, or the trainer's ``filtered.jsonl``) dropped with their duplicate groups. ``overwrite``: replace the outputs of an
        earlier run in ``output`` (without it they are a UsageError). ``resume``: finish an unfinished run in
    ``output`` (one holding ``_INCOMPLETE``: its partial outputs are cleared and the job runs again; a finished
    ``output`` raises :class:`AlreadyComplete`, an empty one just runs). ``beam_options``: Beam pipeline arguments
        (``--runner``, ``--direct_num_workers``, ...), see :func:`make_pipeline`; ignored with ``test_pipeline``.
    """
    check_beam_options(beam_options)
    if resume and not overwrite and is_finished(output):
        raise AlreadyComplete(output, _read_report(output))
    check_output_dir(output, "--output")
    patterns = inputs if isinstance(inputs, str) else ",".join(inputs)
    shards = match_inputs(patterns)
    fs = BeamFileOps()
    if reference and not fs.exists(fs.join(reference, "index", "index.json")):
        raise UsageError(f"--reference {reference} holds no index/index.json from an earlier curation run")
    if reference and is_unfinished(reference):
        raise UsageError(
            f"--reference {reference} is an unfinished curation run: finish it with --resume first"
        )
    if exclude_keys and not fs.exists(exclude_keys):
        raise UsageError(f"--exclude-keys {exclude_keys}: no such file")
    if config.images.device != "cpu":  # one tiny batch there now, not a failed worker later
        images = config.images
        embedder = load_embedder(
            images.embedder, path=images.embedder_path, input_size=32, device=images.device
        )
        embedder.embed([np.zeros((32, 32, 3), dtype=np.uint8)])
    _check_output(output, overwrite, resume)  # after the arguments' own checks, still before any work
    p = test_pipeline if test_pipeline is not None else make_pipeline(beam_options)
    # The marker goes first, before anything is deleted or written: whatever kills the job from here on, OUT
    # reads as unfinished until _SUCCESS replaces it at the very end.
    fs.makedirs(output)
    atomic_write(fs.join(output, INCOMPLETE_MARKER), json.dumps({"started": _now()}) + "\n", fs)
    _prepare_output(output, overwrite, resume=True)  # checked above; the _INCOMPLETE now there is this run's
    log.info("curating %d shard(s) into %s", len(shards), output)
    started = time.perf_counter()
    run = {
        "copyguard": package_version("copyguard") or "0+unknown",
        "started": _now(),
        "inputs": patterns,
        "input_shards": len(shards),
        "output": output,
        "reference": reference,
        "exclude_keys": exclude_keys,
        "runner": _runner(beam_options, test_pipeline),
        "python": platform.python_version(),
        "apache_beam": beam.__version__,
    }
    build_pipeline(p, shards, output, config, reference, exclude_keys=exclude_keys, run=run)
    result = p.run()
    result.wait_until_finish()
    log_totals(result)
    if not fs.exists(fs.join(output, "report.json")):
        raise RuntimeError(f"the pipeline finished without writing {fs.join(output, 'report.json')}")
    report = _read_report(output)
    _mark_finished(output, report)
    log.info(
        "curation done in %.1f s: %s (invariant %s)",
        time.perf_counter() - started,
        report["by_status"],
        "holds" if report["invariant_holds"] else "BROKEN",
    )
    for name, what in OUTPUTS.items():
        if fs.exists(fs.join(output, name)):
            log.info("%-12s %s", what, fs.join(output, name))
    return report


OUTPUTS = {  # what the job leaves in OUTPUT, as listed at its end
    "report.html": "report",
    "report.json": "report JSON",
    "manifest": "manifest",
    "shards": "clean shards",
    "index": "index",
}


def _runner(beam_options: Sequence[str], test_pipeline: beam.Pipeline | None) -> str:
    """The Beam runner's name as given (``--runner X`` / ``--runner=X``), else DirectRunner."""
    if test_pipeline is not None:
        return type(test_pipeline.runner).__name__
    args = list(beam_options)
    for i, arg in enumerate(args):
        if arg == "--runner" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--runner="):
            return arg.split("=", 1)[1]
    return "DirectRunner"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _read_report(output: str) -> dict[str, Any]:
    fs = BeamFileOps()
    with fs.open(fs.join(output, "report.json")) as stream:
        return json.loads(stream.read())


def _mark_finished(output: str, report: dict[str, Any]) -> None:
    """The very last step: ``_SUCCESS`` (written atomically), then ``_INCOMPLETE`` removed. A kill between
    the two leaves both, which still reads as unfinished."""
    fs = BeamFileOps()
    marker = {
        "finished": _now(),
        "inputs": report.get("inputs"),
        "by_status": report.get("by_status"),
        "invariant_holds": report.get("invariant_holds"),
    }
    atomic_write(fs.join(output, SUCCESS_MARKER), json.dumps(marker, indent=2, sort_keys=True) + "\n", fs)
    beam.io.filesystems.FileSystems.delete([fs.join(output, INCOMPLETE_MARKER)])


def run(argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> dict[str, Any]:
    """Apache Beam example style: parse ``argv`` (the job's arguments, ``--config``/``--set``, and Beam's
    pipeline options, which pass through), then :func:`run_curation`; returns ``report.json``'s content."""
    parser = ArgumentParser(prog="copyguard curate", add_help=False)
    add_arguments(parser)
    add_config_args(parser, "curate")
    args, beam_options = parser.parse_known_args(list(argv or []))
    config = load_config(CurateConfig, "curate", args.config, args.overrides)
    try:
        return run_curation(
            config, **job_arguments(args), beam_options=beam_options, test_pipeline=test_pipeline
        )
    except AlreadyComplete as done:  # --resume on a finished run: its report, nothing rewritten
        log.info("%s", done)
        return done.report
