"""The curation job's PTransforms: thin Beam shells around the pure functions of ``copyguard.curation``.

Data flow (``pipelines/curate_graph.py`` wires it; docs/curation.md draws it)::

    shard paths ─ ReadShards ─ EmbedImages ─ UniqueKeys ─┬─ CaptionEdges (MinHash LSH buckets)
    reference index shards ─ ReferenceMembers ──────────┤
                                                        └─ partitions (image_partitions.py): sample ─ k-means
                                                           ─ assign ─ GroupByKey(partition) ─ exact search
    image edges + caption edges ─ ConnectedComponents ─ GroupByKey(component) ─ joint policy per component
        ─┬─ WriteShardOutputs (per input shard)   ─ WriteIndexShards (per partition) ─ report

Every step is distributed: no step receives a per-sample collection as a side input or runs over all samples
in one worker (the k-means trains on a fixed-size sample; the report adds up per-component summaries).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from copyguard.curation.captions import band_keys, bucket_edges, lsh_params, minhash_signature
from copyguard.curation.config import CurateConfig, MinHashConfig
from copyguard.curation.records import Rejection, RejectReason
from copyguard.pipelines.beam_connected_components import ConnectedComponents
from copyguard.pipelines.embed_handler import EmbedderModelHandler
from copyguard.pipelines.progress import Progress

__all__ = ["EmbeddedSample", "EmbedImages", "UniqueKeys", "CaptionEdges", "CaptionComponents", "REJECTED"]

log = logging.getLogger(__name__)

REJECTED = "rejected"


@dataclass(frozen=True)
class EmbeddedSample:
    """What the global steps need of a sample: no image bytes, its descriptor instead."""

    key: str
    shard: str
    caption: str
    width: int
    height: int
    embedding: np.ndarray = field(repr=False, compare=False)
    reference: bool = False  # an entry of an earlier run's index (incremental curation)


class _ToEmbedded(beam.DoFn):
    """``((key, shard, caption, width, height), PredictionResult)`` -> :class:`EmbeddedSample` (counted)."""

    def __init__(self) -> None:
        self.progress = Progress("images_embedded")

    def process(self, item: tuple[tuple[str, str, str, int, int], Any]):
        (key, shard, caption, width, height), result = item
        self.progress.add()
        yield EmbeddedSample(
            key, shard, caption, width, height, np.asarray(result.inference, dtype=np.float32)
        )


class EmbedImages(beam.PTransform):
    """``Sample`` -> :class:`EmbeddedSample` with its image descriptor, batched through Beam ``RunInference``."""

    def __init__(self, cfg: CurateConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def expand(self, samples):
        handler = KeyedModelHandler(EmbedderModelHandler(self.cfg.images, self.cfg.io.max_pixels))
        return (
            samples
            | "KeyByMeta" >> beam.Map(lambda s: ((s.key, s.shard, s.caption, s.width, s.height), s.image))
            | "RunEmbedder" >> RunInference(handler)
            | "ToEmbeddedSample" >> beam.ParDo(_ToEmbedded())
        )


def _pick_unique(item: tuple[str, list[EmbeddedSample]]):
    """One record per key: the copy from the smallest shard path; the rest are ``duplicate_key``."""
    key, records = item
    records = sorted(records, key=lambda r: (not r.reference, r.shard))
    winner = records[0]
    yield winner
    for other in records[1:]:
        if other.reference:
            continue
        where = "the reference run" if winner.reference else winner.shard
        yield beam.pvalue.TaggedOutput(
            REJECTED,
            Rejection(key, RejectReason.DUPLICATE_KEY, other.shard, f"key '{key}' already read from {where}"),
        )


class UniqueKeys(beam.PTransform):
    """Keys must be unique across all shards (and the reference run): later copies become rejections."""

    def expand(self, lights):
        return (
            lights
            | "KeyByKey" >> beam.Map(lambda r: (r.key, r))
            | "GroupByKey" >> beam.GroupByKey()
            | "PickUnique" >> beam.FlatMap(_pick_unique).with_outputs(REJECTED, main="unique")
        )


class _BandFn(beam.DoFn):
    """Caption -> ``((band, band_hash), (key, caption))`` for each LSH band (Broder, 1997)."""

    def __init__(self, cfg: MinHashConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        self.bands, self.rows = lsh_params(self.cfg.threshold, self.cfg.num_perm)

    def process(self, record: EmbeddedSample):
        signature = minhash_signature(record.caption, self.cfg)
        for band_key in band_keys(signature, self.bands, self.rows):
            yield band_key, (record.key, record.caption)


def _bucket_edges(item: tuple[Any, Any], cfg: MinHashConfig) -> list[tuple[str, str]]:
    members = list(item[1])
    if len(members) < 2:
        return []
    return [(min(a, b), max(a, b)) for a, b in bucket_edges(members, cfg) if a != b]


class CaptionEdges(beam.PTransform):
    """Records with ``key`` and ``caption`` -> near-duplicate caption edges ``(a, b)``, ``a < b``.

    MinHash signatures, LSH band keys, ``GroupByKey`` on the band keys, star edges within each bucket
    (verified with the exact shingle Jaccard when configured; giant buckets are logged and capped).
    """

    def __init__(self, cfg: MinHashConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def expand(self, records):
        return (
            records
            | "BandKeys" >> beam.ParDo(_BandFn(self.cfg))
            | "GroupBuckets" >> beam.GroupByKey()
            | "BucketEdges" >> beam.FlatMap(_bucket_edges, self.cfg)
            | "DistinctEdges" >> beam.Distinct()
        )


class CaptionComponents(beam.PTransform):
    """:class:`EmbeddedSample` records -> ``(key, caption_group)`` for every key in a near-duplicate caption group:
    :class:`CaptionEdges`, then :class:`ConnectedComponents`. Keys absent from the output are their own
    caption group. (The job itself feeds the caption edges and the image edges to one components step.)
    """

    def __init__(self, cfg: MinHashConfig, max_rounds: int = 12) -> None:
        super().__init__()
        self.cfg = cfg
        self.max_rounds = max_rounds

    def expand(self, lights):
        edges = lights | "Edges" >> CaptionEdges(self.cfg)
        return edges | "Components" >> ConnectedComponents(self.max_rounds)
