"""The distributed image search and the sharded index, as Beam steps (pure logic: curation/partitions.py).

- :class:`TrainPartitions`: the ``partition_sample`` descriptors with the smallest key hashes
  (``Top.Smallest``: a fixed-size, order-independent sample, unlike ``Sample.FixedSizeGlobally``, which is
  random) train the coarse quantizer in one worker; the only per-run side input is its ``[P, d]`` centroids.
  An incremental run reuses the reference run's centroids (:func:`reference_centroids`), so its partitions
  are the reference's index shards.
- :class:`AssignPartitions`: each descriptor gets its ``image_match.descriptor_stats`` (against the
  background: the first descriptors of the same hash-ranked sample, or the reference run's) and goes to its
  home partition as a member and to up to
  ``partition_probe - 1`` neighbouring partitions as a query; its policy record (:class:`Member`, no
  descriptor) goes on with its home partition.
- :class:`SearchPartition`: per partition, the exact search of :func:`partition_edges`; with ``--reference``
  also the new descriptors against that partition's reference shard (and no other). Its members'
  descriptors are kept in a temporary file for :class:`WriteIndexShards` (no second shuffle of vectors).
- :class:`WriteIndexShards`: per partition, the kept new images plus the reference shard (with its updated
  and deleted entries) as one index shard; :func:`write_index_info` lists them.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
import numpy as np

from copyguard.common.fileops import atomic_write
from copyguard.curation.component_policy import Member
from copyguard.curation.config import CurateConfig
from copyguard.curation.image_match import background_size, descriptor_stats
from copyguard.curation.index import IndexEntry
from copyguard.curation.index_shards import (
    load_background,
    load_centroids,
    read_shard,
    shard_name,
    write_shard,
    write_sharded_info,
)
from copyguard.curation.partitions import assign, n_partitions, partition_edges, sample_rank, train_centroids
from copyguard.pipelines.beam_io import BeamFileOps
from copyguard.pipelines.transforms import EmbeddedSample

__all__ = [
    "VECTORS",
    "AssignPartitions",
    "SearchPartition",
    "TrainPartitions",
    "WriteIndexShards",
    "reference_background",
    "reference_centroids",
    "write_index_info",
]

log = logging.getLogger(__name__)

VECTORS = "vectors"
MEMBERS_DIR = "_members"  # temporary, under OUT/index; removed by write_index_info


def _sample_matrix(sample: list) -> np.ndarray:
    rows = sorted(sample, key=lambda s: s[:2])  # by key hash: the same rows whatever the arrival order
    return np.stack([np.frombuffer(vec, dtype=np.float16) for _rank, _key, vec in rows]).astype(np.float32)


def _background(sample: list, cfg: CurateConfig) -> np.ndarray:
    """image_match's background: the first ``background_size`` descriptors of the hash-ranked sample."""
    m = background_size(cfg.images)
    return _sample_matrix(sample)[:m] if sample and m else np.zeros((0, 0), np.float32)


def _train(sample: list, count: int, cfg: CurateConfig) -> np.ndarray:
    if not sample:
        return np.zeros((1, 0), np.float32)
    x = _sample_matrix(sample)
    k = n_partitions(count, cfg.images)
    centroids = train_centroids(x, k, cfg.images.seed)
    log.info(
        "coarse quantizer: %d partitions for %d descriptors (trained on %d)", len(centroids), count, len(x)
    )
    return centroids


class TrainPartitions(beam.PTransform):
    """New :class:`EmbeddedSample` records -> ``{"centroids": [P, d], "background": [m, d]}`` (singleton
    PCollections; ``m = image_match.background_size``, 0 without score normalization)."""

    def __init__(self, cfg: CurateConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def expand(self, lights):
        count = lights | "Count" >> beam.combiners.Count.Globally()
        sample = (
            lights
            # float16 bytes: half the sample's memory; k-means does not need the last bits
            | "Rank"
            >> beam.Map(lambda r: (sample_rank(r.key), r.key, r.embedding.astype(np.float16).tobytes()))
            | "Sample" >> beam.combiners.Top.Smallest(self.cfg.images.partition_sample)
        )
        return {
            "centroids": sample
            | "KMeans" >> beam.Map(_train, count=beam.pvalue.AsSingleton(count), cfg=self.cfg),
            "background": sample | "Background" >> beam.Map(_background, self.cfg),
        }


def reference_centroids(reference: str) -> np.ndarray:
    """The reference run's coarse quantizer (its index partitions)."""
    fs = BeamFileOps()
    return load_centroids(fs.join(reference, "index"), fs=fs)


def reference_background(reference: str) -> np.ndarray:
    """The reference run's background descriptors (pairs across runs are scored as within one run)."""
    fs = BeamFileOps()
    return load_background(fs.join(reference, "index"), fs=fs)


class AssignPartitions(beam.DoFn):
    """EmbeddedSample -> :class:`Member` (main) and ``(partition, (role, key, descriptor, stats))`` (``VECTORS``)."""

    def __init__(self, cfg: CurateConfig) -> None:
        self.cfg = cfg.images

    def process(self, light: EmbeddedSample, centroids: np.ndarray, background: np.ndarray):
        parts = assign(light.embedding, centroids, self.cfg.partition_margin, self.cfg.partition_probe)
        stats = descriptor_stats(light.embedding[None, :], background if len(background) else None, self.cfg)[
            0
        ]
        for i, p in enumerate(parts):
            role = "m" if i == 0 else "q"
            yield beam.pvalue.TaggedOutput(VECTORS, (p, (role, light.key, light.embedding, stats)))
        yield Member(light.key, light.shard, light.caption, light.width, light.height, parts[0])


def _stack(rows: list, dim: int, width: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    keys = [r[1] for r in rows]
    vecs = np.stack([r[2] for r in rows]).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
    stats = np.stack([r[3] for r in rows]).astype(np.float32) if rows else np.zeros((0, width), np.float32)
    return keys, vecs, stats


def _members_path(output: str, partition: int) -> str:
    fs = BeamFileOps()
    return fs.join(output, "index", MEMBERS_DIR, f"{shard_name(partition)}.npz")


class SearchPartition(beam.DoFn):
    """``(partition, [(role, key, descriptor, stats)])`` -> image edges ``(a, b, score)``, ``a < b``."""

    def __init__(self, cfg: CurateConfig, output: str, reference: str | None) -> None:
        self.cfg = cfg
        self.output = output
        self.reference = reference

    def process(self, item: tuple[int, Iterable[tuple]], background: np.ndarray):
        partition, rows = item
        rows = sorted(rows, key=lambda r: (r[1], r[0]))
        dim = len(rows[0][2])
        width = len(rows[0][3])
        members = _stack([r for r in rows if r[0] == "m"], dim, width)
        queries = _stack([r for r in rows if r[0] == "q"], dim, width)
        yield from partition_edges(*members, *queries, self.cfg.images)
        if self.reference:
            fs = BeamFileOps()
            shard = read_shard(fs.join(self.reference, "index"), partition, fs=fs)
            if len(shard):
                keys = members[0] + queries[0]
                vecs = np.concatenate([members[1], queries[1]])
                stats = np.concatenate([members[2], queries[2]])
                ref_vectors = shard.vectors()  # stats from the reference run's own background (same scores)
                ref_stats = descriptor_stats(
                    ref_vectors, background if len(background) else None, self.cfg.images
                )
                yield from partition_edges(
                    shard.keys, ref_vectors, ref_stats, keys, vecs, stats, self.cfg.images, self_join=False
                )
        buf = io.BytesIO()
        np.savez(buf, keys=np.array(members[0], dtype=str), vectors=members[1])
        fs = BeamFileOps()
        fs.makedirs(fs.join(self.output, "index", MEMBERS_DIR))
        atomic_write(_members_path(self.output, partition), buf.getvalue(), fs)


class WriteIndexShards(beam.DoFn):
    """``(partition, {"ids", "entries", "updates"})`` -> the partition's shard line for ``index.json``."""

    def __init__(self, output: str, reference: str | None, embedder: dict[str, Any]) -> None:
        self.output = output
        self.reference = reference
        self.embedder = embedder

    def process(self, item: tuple[int, dict[str, Iterable]]):
        partition, grouped = item
        fs = BeamFileOps()
        entries: dict[str, IndexEntry] = {e.key: e for e in grouped["entries"]}
        vectors: dict[str, np.ndarray] = {}
        if entries:
            with fs.open(_members_path(self.output, partition)) as stream:
                data = np.load(io.BytesIO(stream.read()))
                for key, vec in zip(data["keys"].tolist(), data["vectors"], strict=True):
                    if key in entries:
                        vectors[key] = vec
        if self.reference:
            shard = read_shard(fs.join(self.reference, "index"), partition, fs=fs)
            updates = dict(grouped["updates"])
            ref_vectors = shard.vectors()
            for row, key in enumerate(shard.keys):
                update = updates.get(key, shard.entry(row))
                if update is not None:
                    entries[key], vectors[key] = update, ref_vectors[row]
        keys = sorted(entries)
        dim = int(self.embedder["dim"])
        matrix = np.stack([vectors[k] for k in keys]) if keys else np.zeros((0, dim), np.float32)
        yield write_shard(
            fs.join(self.output, "index"), partition, matrix, [entries[k] for k in keys], self.embedder, fs=fs
        )


def write_index_info(
    _: Any,
    output: str,
    shards: list[dict],
    centroids: np.ndarray,
    embedder: dict[str, Any],
    reference: str | None,
    background: np.ndarray | None = None,
) -> dict[str, Any]:
    """The sharded index's ``index.json`` (after every shard); removes the temporary member files."""
    fs = BeamFileOps()
    directory = fs.join(output, "index")
    if centroids.shape[1] == 0:  # no new descriptor at all
        centroids = np.zeros((len(centroids), int(embedder["dim"])), np.float32)
    if background is not None and background.shape[1] == 0:
        background = None
    info = write_sharded_info(directory, shards, centroids, embedder, fs=fs, background=background)
    fs.delete(fs.join(directory, MEMBERS_DIR))  # recursive on every Beam file system
    return {"count": info["count"], "partitions": len(shards), "reference": bool(reference)}
