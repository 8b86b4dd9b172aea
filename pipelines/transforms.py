"""The curation job's PTransforms: thin Beam shells around the pure functions of ``copyguard.curation``.

Data flow (``pipelines/curate.py`` wires it)::

    shard paths ─ ReadShards ─ EmbedImages ─ UniqueKeys ─┬─ CaptionComponents (MinHash LSH, distributed)
                                                        └─ DecideGlobally (FAISS clusters, policy, index)
                                                              └─ WriteShardOutputs (per input shard)

Reading, embedding, caption banding and connected components are distributed. Image clustering, the
joint policy and the index are global by nature; they run in one worker over light records (key, size,
caption, descriptor: about 2.2 KB per sample), which bounds a single run at a few million samples.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from copyguard.curation.captions import band_keys, bucket_edges, lsh_params, minhash_signature
from copyguard.curation.curate_config import CurateConfig, MinHashConfig
from copyguard.curation.records import Rejection, RejectReason
from copyguard.pipelines.beam_components import ConnectedComponents
from copyguard.pipelines.embed_handler import EmbedderModelHandler

__all__ = ["Light", "EmbedImages", "UniqueKeys", "CaptionComponents", "REJECTED"]

log = logging.getLogger(__name__)

REJECTED = "rejected"


@dataclass(frozen=True)
class Light:
    """What the global steps need of a sample: no image bytes, its descriptor instead."""

    key: str
    shard: str
    caption: str
    width: int
    height: int
    embedding: np.ndarray = field(repr=False, compare=False)
    reference: bool = False  # an entry of an earlier run's index (incremental curation)


def _to_light(item: tuple[tuple[str, str, str, int, int], Any]) -> Light:
    (key, shard, caption, width, height), result = item
    return Light(key, shard, caption, width, height, np.asarray(result.inference, dtype=np.float32))


class EmbedImages(beam.PTransform):
    """``Sample`` -> :class:`Light` with its image descriptor, batched through Beam ``RunInference``."""

    def __init__(self, cfg: CurateConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def expand(self, samples):
        handler = KeyedModelHandler(EmbedderModelHandler(self.cfg.images, self.cfg.io.max_pixels))
        return (
            samples
            | "KeyByMeta" >> beam.Map(lambda s: ((s.key, s.shard, s.caption, s.width, s.height), s.image))
            | "RunEmbedder" >> RunInference(handler)
            | "ToLight" >> beam.Map(_to_light)
        )


def _pick_unique(item: tuple[str, list[Light]]):
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
    """Caption -> ``((band, band_hash), (key, caption))`` for each LSH band (algorithms.md §10)."""

    def __init__(self, cfg: MinHashConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        self.bands, self.rows = lsh_params(self.cfg.threshold, self.cfg.num_perm)

    def process(self, record: Light):
        signature = minhash_signature(record.caption, self.cfg)
        for band_key in band_keys(signature, self.bands, self.rows):
            yield band_key, (record.key, record.caption)


def _bucket_edges(item: tuple[Any, Any], cfg: MinHashConfig) -> list[tuple[str, str]]:
    members = list(item[1])
    return bucket_edges(members, cfg) if len(members) > 1 else []


class CaptionComponents(beam.PTransform):
    """:class:`Light` records -> ``(key, caption_group)`` for every key in a near-duplicate caption group.

    MinHash signatures, LSH band keys, ``GroupByKey`` on the band keys, star edges within each bucket
    (verified with the exact shingle Jaccard when configured; giant buckets are logged and capped), then
    :class:`ConnectedComponents`. Keys absent from the output are their own caption group.
    """

    def __init__(self, cfg: MinHashConfig, max_rounds: int = 12) -> None:
        super().__init__()
        self.cfg = cfg
        self.max_rounds = max_rounds

    def expand(self, lights):
        cfg = self.cfg
        edges = (
            lights
            | "BandKeys" >> beam.ParDo(_BandFn(cfg))
            | "GroupBuckets" >> beam.GroupByKey()
            | "BucketEdges" >> beam.FlatMap(_bucket_edges, cfg)
        )
        return edges | "Components" >> ConnectedComponents(self.max_rounds)
