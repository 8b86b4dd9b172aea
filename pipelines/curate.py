"""``copyguard curate``: the Beam curation job (DirectRunner locally; Dataflow, Flink or Spark by flags).

    copyguard curate --input 'DIR/*.tar' --output OUT [--config configs/curate.yaml] [--set ...]
                     [--reference PREV_OUT] [--overwrite] [Beam pipeline options...]

Any argument the job does not know (``--runner``, ``--direct_num_workers``, ``--direct_running_mode``,
``--temp_location``, ``--project``...) goes straight to Beam's ``PipelineOptions``. Outputs under OUT:
``shards/`` (cleaned shards), ``manifest/`` (Parquet, one row per input sample), ``index/`` (the training-set
index) and ``report.json`` / ``report.html``. See :mod:`copyguard.pipelines.transforms` for the data flow.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from copyguard.curation.config import load_config
from copyguard.curation.curate_config import CurateConfig
from copyguard.curation.errors import UsageError
from copyguard.pipelines.beam_io import BeamFileOps, ReadShards, match_inputs
from copyguard.pipelines.cmd_curate import add_arguments
from copyguard.pipelines.curate_steps import (
    SUMMARY,
    WriteShardOutputs,
    decide_globally,
    load_reference,
    thumbnail_keys,
    write_report,
)
from copyguard.pipelines.transforms import CaptionComponents, EmbedImages, UniqueKeys

__all__ = ["run", "build_pipeline", "make_pipeline"]

log = logging.getLogger(__name__)

OUTPUT_PARTS = ("shards", "manifest", "index", "report.json", "report.html")


def _prepare_output(output: str, overwrite: bool) -> None:
    fs = BeamFileOps()
    existing = [part for part in OUTPUT_PARTS if fs.exists(fs.join(output, part))]
    if existing and not overwrite:
        raise UsageError(f"{output} already holds curation outputs ({', '.join(existing)}); pass --overwrite")
    for part in existing:
        path = fs.join(output, part)
        matches = beam.io.filesystems.FileSystems.match([fs.join(path, "*")])[0].metadata_list
        files = [m.path for m in matches] if part in ("shards", "manifest", "index") else [path]
        if files:
            beam.io.filesystems.FileSystems.delete(files)
    fs.makedirs(output)
    for sub in ("shards", "manifest", "index"):
        fs.makedirs(fs.join(output, sub))


def build_pipeline(
    p: beam.Pipeline, inputs: list[str], output: str, cfg: CurateConfig, reference: str | None = None
) -> None:
    """Add the curation job to pipeline ``p`` (see the module docstring of transforms.py for the flow)."""
    shard_index = {path: i for i, path in enumerate(inputs)}
    read = p | "InputShards" >> beam.Create(inputs) | "ReadShards" >> ReadShards(cfg.io.max_pixels)
    lights = read.samples | "EmbedImages" >> EmbedImages(cfg)
    if reference:
        refs = (
            p | "ReferenceRun" >> beam.Create([reference]) | "LoadReference" >> beam.FlatMap(load_reference)
        )
        lights = (lights, refs) | "WithReference" >> beam.Flatten()
    unique = lights | "UniqueKeys" >> UniqueKeys()
    caption_pairs = unique.unique | "CaptionDedup" >> CaptionComponents(
        cfg.minhash, cfg.minhash.max_cc_rounds
    )

    decided = (
        p
        | "Once" >> beam.Create([None])
        | "DecideGlobally"
        >> beam.FlatMap(
            lambda _, lights, pairs: decide_globally(lights, pairs, cfg, output, reference),
            lights=beam.pvalue.AsList(unique.unique),
            pairs=beam.pvalue.AsList(caption_pairs),
        ).with_outputs(SUMMARY, main="rows")
    )
    rejections = (read.rejected, unique.rejected) | "AllRejections" >> beam.Flatten()
    per_shard = {
        "decisions": decided.rows | "RowsByShard" >> beam.Map(lambda r: (r["shard"], r)),
        "rejections": rejections | "RejectionsByShard" >> beam.Map(lambda r: (r.shard, r)),
    } | "JoinByShard" >> beam.CoGroupByKey()
    thumbs_wanted = decided[SUMMARY] | "ThumbnailKeys" >> beam.FlatMap(thumbnail_keys)
    written = per_shard | "WriteShardOutputs" >> beam.ParDo(
        WriteShardOutputs(output, shard_index, cfg), thumb_keys=beam.pvalue.AsList(thumbs_wanted)
    )
    counts = written | "Counts" >> beam.Filter(lambda kv: kv[0] == "counts") | "CountValues" >> beam.Values()
    thumbs = written | "Thumbs" >> beam.Filter(lambda kv: kv[0] == "thumb") | "ThumbValues" >> beam.Values()
    n_samples = read.samples | "CountSamples" >> beam.combiners.Count.Globally()
    n_rejected = read.rejected | "CountRejected" >> beam.combiners.Count.Globally()
    (
        p
        | "Finish" >> beam.Create([None])
        | "WriteReport"
        >> beam.Map(
            lambda _, a, b, counts, summaries, thumbs: write_report(
                _, output, a + b, counts, summaries, thumbs, cfg
            ),
            a=beam.pvalue.AsSingleton(n_samples),
            b=beam.pvalue.AsSingleton(n_rejected),
            counts=beam.pvalue.AsList(counts),
            summaries=beam.pvalue.AsList(decided[SUMMARY]),
            thumbs=beam.pvalue.AsList(thumbs),
        )
    )


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


def run(argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> dict[str, Any]:
    """Parse arguments, run the job to completion and return ``report.json``'s content."""
    parser = argparse.ArgumentParser(prog="copyguard curate", add_help=False)
    add_arguments(parser)
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args, beam_args = parser.parse_known_args(list(argv or []))
    cfg = load_config(CurateConfig, "curate", args.config, args.overrides)
    inputs = match_inputs(args.input)
    if args.reference and not BeamFileOps().exists(BeamFileOps().join(args.reference, "index", "index.json")):
        raise UsageError(
            f"--reference {args.reference} holds no index/index.json from an earlier curation run"
        )
    _prepare_output(args.output, args.overwrite)
    log.info("curating %d shard(s) into %s", len(inputs), args.output)
    started = time.perf_counter()
    p = test_pipeline if test_pipeline is not None else make_pipeline(beam_args)
    build_pipeline(p, inputs, args.output, cfg, args.reference)
    result = p.run()
    result.wait_until_finish()
    fs = BeamFileOps()
    with fs.open(fs.join(args.output, "report.json")) as stream:
        report = json.loads(stream.read())
    log.info(
        "curation done in %.1f s: %s (invariant %s)",
        time.perf_counter() - started,
        report["by_status"],
        "holds" if report["invariant_holds"] else "BROKEN",
    )
    return report
