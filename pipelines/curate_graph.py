"""The curation job's Beam graph (``build_pipeline`` in curate.py is :func:`build_curation_graph`).

Every step is distributed; the only side inputs are small and per run, not per sample: the coarse
quantizer's ``[P, d]`` centroids, image_match's background descriptors (a fixed-size prefix of the same
hash-ranked sample), the per-component summaries added up into one report summary, the
per-partition lines of the index, the thumbnail keys of the report's largest groups and a few counts.
See transforms.py for the data-flow sketch and docs/curation.md for the design and its measurements.
"""

from __future__ import annotations

import apache_beam as beam

from copyguard.curation.config import CurateConfig
from copyguard.curation.curate_report import REJECTED_SHOWN
from copyguard.curation.embedders import embedder_info, load_embedder
from copyguard.curation.manifest import rejection_row
from copyguard.pipelines.beam_connected_components import ConnectedComponents
from copyguard.pipelines.beam_io import BeamFileOps, ReadShards, io_limits
from copyguard.pipelines.curate_steps import (
    ENTRIES,
    SINGLE,
    SUMMARY,
    UPDATES,
    DecideComponent,
    MergeSummaries,
    WriteShardOutputs,
    decide_single,
    exclude_key,
    reference_members,
    route_to_component,
    singles_summary,
    thumbnail_keys,
    write_report,
)
from copyguard.pipelines.image_partitions import (
    VECTORS,
    AssignPartitions,
    SearchPartition,
    TrainPartitions,
    WriteIndexShards,
    reference_background,
    reference_centroids,
    write_index_info,
)
from copyguard.pipelines.transforms import CaptionEdges, EmbedImages, UniqueKeys

__all__ = ["build_curation_graph", "curate_lights"]


def _reference_shape(reference: str) -> tuple[int, int]:
    """(partitions, entries) of the reference run's index: one small JSON read on the launcher."""
    import json

    fs = BeamFileOps()
    with fs.open(fs.join(reference, "index", "index.json")) as stream:
        info = json.loads(stream.read())
    if "shards" not in info:
        from copyguard.common.errors import UsageError

        raise UsageError(f"--reference {reference}: its index is not sharded (written by an older copyguard)")
    return len(info["shards"]), int(info["count"])


def build_curation_graph(
    p: beam.Pipeline,
    inputs: list[str],
    output: str,
    cfg: CurateConfig,
    reference: str | None = None,
    exclude_keys: str | None = None,
    run: dict | None = None,
) -> None:
    """Add the curation job to pipeline ``p``: read, embed, :func:`curate_lights`, write shards and report
    (``run``: the run facts shown in the report: inputs, output, version, start time...)."""
    embedder = embedder_info(
        load_embedder(cfg.images.embedder, path=cfg.images.embedder_path, input_size=cfg.images.input_size)
    )
    shard_index = {path: i for i, path in enumerate(inputs)}
    read = (
        p
        | "InputShards" >> beam.Create(inputs)
        | "ReadShards" >> ReadShards(cfg.io.max_pixels, **io_limits(cfg))
    )
    lights = read.samples | "EmbedImages" >> EmbedImages(cfg)
    stages = curate_lights(p, lights, output, cfg, embedder, reference, exclude_keys)
    rows, summary, index_info = stages["rows"], stages["summary"], stages["index_info"]
    ref_entries = stages["reference_entries"]

    # Per input shard: cleaned shards, manifest parts, thumbnails; then the report.
    rejections = (read.rejected, stages["rejected"]) | "AllRejections" >> beam.Flatten()
    per_shard = {
        "decisions": rows | "RowsByShard" >> beam.Map(lambda r: (r["shard"], r)),
        "rejections": rejections | "RejectionsByShard" >> beam.Map(lambda r: (r.shard, r)),
    } | "JoinByShard" >> beam.CoGroupByKey()
    thumbs_wanted = summary | "ThumbnailKeys" >> beam.FlatMap(thumbnail_keys)
    written = per_shard | "WriteShardOutputs" >> beam.ParDo(
        WriteShardOutputs(output, shard_index, cfg), thumb_keys=beam.pvalue.AsList(thumbs_wanted)
    )
    counts = written | "Counts" >> beam.Filter(lambda kv: kv[0] == "counts") | "CountValues" >> beam.Values()
    thumbs = written | "Thumbs" >> beam.Filter(lambda kv: kv[0] == "thumb") | "ThumbValues" >> beam.Values()
    totals = counts | "AddCounts" >> beam.CombineGlobally(_add_counters)
    n_samples = read.samples | "CountSamples" >> beam.combiners.Count.Globally()
    n_rejected = read.rejected | "CountRejected" >> beam.combiners.Count.Globally()
    first_rejected = (  # a bounded list (the report shows these; the manifest holds every rejection)
        rejections
        | "RejectionRows" >> beam.Map(lambda r: {k: v for k, v in rejection_row(r).items() if v is not None})
        | "FirstRejections"
        >> beam.combiners.Top.Smallest(REJECTED_SHOWN, key=lambda r: (r["shard"], r["key"]))
    )
    (
        p
        | "Finish" >> beam.Create([None])
        | "WriteReport"
        >> beam.Map(
            lambda _, a, b, totals, summary, thumbs, info, rejected: write_report(
                _, output, a + b, [totals], [summary], thumbs, cfg, info, ref_entries, rejected, run
            ),
            a=beam.pvalue.AsSingleton(n_samples),
            b=beam.pvalue.AsSingleton(n_rejected),
            totals=beam.pvalue.AsSingleton(totals),
            summary=beam.pvalue.AsSingleton(summary),
            thumbs=beam.pvalue.AsList(thumbs),
            info=beam.pvalue.AsSingleton(index_info),
            rejected=beam.pvalue.AsSingleton(first_rejected),
        )
    )


def curate_lights(
    p: beam.Pipeline,
    lights,
    output: str,
    cfg: CurateConfig,
    embedder: dict,
    reference: str | None = None,
    exclude_keys: str | None = None,
) -> dict:
    """The global stages over embedded :class:`EmbeddedSample` records (no image bytes): unique keys, partitioned
    image search, caption edges, components, policy per component and the sharded index under
    ``output/index``. Returns the PCollections ``rows`` (manifest rows of the new samples), ``rejected``
    (duplicate keys), ``summary`` (one dict), ``index_info`` (one dict), ``image_edges`` and the reference
    run's entry count (``reference_entries``, an int)."""
    ref_partitions, ref_entries = _reference_shape(reference) if reference else (0, 0)
    records = lights
    if reference:
        refs = (
            p
            | "ReferencePartitions" >> beam.Create(list(range(ref_partitions)))
            | "ReferenceMembers" >> beam.FlatMap(reference_members, reference)
        )
        records = (lights, refs) | "WithReference" >> beam.Flatten()
    unique = records | "UniqueKeys" >> UniqueKeys()
    new = unique.unique | "NewOnly" >> beam.Filter(lambda r: not r.reference)
    ref_members = unique.unique | "ReferenceOnly" >> beam.Filter(lambda r: r.reference)

    # Partitioned image search.
    if reference:
        ref_run = p | "ReferenceRun" >> beam.Create([reference])
        centroids = ref_run | "ReferenceCentroids" >> beam.Map(reference_centroids)
        background = ref_run | "ReferenceBackground" >> beam.Map(reference_background)
    else:
        quantizer = new | "TrainPartitions" >> TrainPartitions(cfg)
        centroids, background = quantizer["centroids"], quantizer["background"]
    assigned = new | "AssignPartitions" >> beam.ParDo(
        AssignPartitions(cfg),
        centroids=beam.pvalue.AsSingleton(centroids),
        background=beam.pvalue.AsSingleton(background),
    ).with_outputs(VECTORS, main="members")
    image_edges = (
        assigned[VECTORS]
        | "GroupPartitions" >> beam.GroupByKey()
        | "SearchPartitions"
        >> beam.ParDo(SearchPartition(cfg, output, reference), background=beam.pvalue.AsSingleton(background))
        | "DistinctImageEdges" >> beam.Distinct()
    )
    members = (assigned.members, ref_members) | "AllMembers" >> beam.Flatten()
    caption_edges = members | "CaptionEdges" >> CaptionEdges(cfg.minhash)

    # One connected-components run over both kinds of edges, then the policy per component.
    labels = (
        (
            image_edges | "ImagePairs" >> beam.Map(lambda e: (e[0], e[1])),
            caption_edges,
        )
        | "AllEdges" >> beam.Flatten()
        | "Components" >> ConnectedComponents(cfg.minhash.max_cc_rounds)
    )
    excluded = p | "NoExclusions" >> beam.Create([])
    if exclude_keys:
        excluded = (
            p
            | "ReadExcludeKeys" >> beam.io.ReadFromText(exclude_keys)
            | "ParseExcludeKeys" >> beam.FlatMap(exclude_key)
        )
    routed = (
        {
            "member": members | "MemberByKey" >> beam.Map(lambda m: (m.key, m)),
            "label": labels,
            "image": image_edges | "ImageByKey" >> beam.Map(lambda e: (e[0], e)),
            "caption": caption_edges | "CaptionByKey" >> beam.Map(lambda e: (e[0], e)),
            "excluded": excluded | "ExcludedByKey" >> beam.Map(lambda k: (k, True)),
        }
        | "JoinByKey" >> beam.CoGroupByKey()
        | "Route" >> beam.FlatMap(route_to_component).with_outputs(SINGLE, main="parts")
    )
    decided = (
        routed.parts
        | "GroupComponents" >> beam.GroupByKey()
        | "DecideComponents"
        >> beam.ParDo(DecideComponent(cfg)).with_outputs(ENTRIES, UPDATES, SUMMARY, main="rows")
    )
    singles = routed[SINGLE] | "DecideSingles" >> beam.FlatMap(decide_single, cfg).with_outputs(
        ENTRIES, UPDATES, SUMMARY, SINGLE, main="rows"
    )
    singles_count = singles[SINGLE] | "CountSingles" >> beam.CombineGlobally(sum)
    summary = (
        (
            decided[SUMMARY],
            singles[SUMMARY],
            singles_count | "SinglesSummary" >> beam.Map(singles_summary),
        )
        | "Summaries" >> beam.Flatten()
        | "MergeSummaries" >> beam.CombineGlobally(MergeSummaries(cfg.report.top_groups))
    )

    # The sharded index: one shard per partition, then index.json.
    partition_ids = centroids | "PartitionIds" >> beam.FlatMap(lambda c: [(i, None) for i in range(len(c))])
    shard_lines = (
        {
            "ids": partition_ids,
            "entries": (decided[ENTRIES], singles[ENTRIES]) | "AllEntries" >> beam.Flatten(),
            "updates": (decided[UPDATES], singles[UPDATES]) | "AllUpdates" >> beam.Flatten(),
        }
        | "JoinByPartition" >> beam.CoGroupByKey()
        | "WriteIndexShards" >> beam.ParDo(WriteIndexShards(output, reference, embedder))
    )
    index_info = (
        p
        | "IndexOnce" >> beam.Create([None])
        | "WriteIndexInfo"
        >> beam.Map(
            write_index_info,
            output,
            shards=beam.pvalue.AsList(shard_lines),
            centroids=beam.pvalue.AsSingleton(centroids),
            embedder=embedder,
            reference=reference,
            background=beam.pvalue.AsSingleton(background),
        )
    )

    rows = (decided.rows, singles.rows) | "AllRows" >> beam.Flatten()
    return {
        "rows": rows,
        "rejected": unique.rejected,
        "summary": summary,
        "index_info": index_info,
        "image_edges": image_edges,
        "reference_entries": ref_entries,
    }


def _add_counters(counters):
    from collections import Counter

    total: Counter = Counter()
    for c in counters:
        total.update(c)
    return total
