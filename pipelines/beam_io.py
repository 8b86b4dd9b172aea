"""Beam-side file access: :class:`BeamFileOps` (``FileSystems``) and the :class:`ReadShards` transform.

All file access of the Beam jobs goes through ``apache_beam.io.filesystems.FileSystems``, so ``gs://`` and
``s3://`` paths work on Dataflow, Flink or Spark without code changes.
"""

from __future__ import annotations

import contextlib
import logging
from typing import BinaryIO

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from copyguard.common.errors import UsageError
from copyguard.curation.config import CurateConfig
from copyguard.curation.records import Rejection, RejectReason, Sample
from copyguard.curation.shards import read_shard, shard_key
from copyguard.pipelines.progress import Progress

__all__ = ["BeamFileOps", "ReadShards", "io_limits", "match_inputs", "REJECTED"]

log = logging.getLogger(__name__)

REJECTED = "rejected"


class BeamFileOps:
    """:class:`copyguard.common.fileops.FileOps` over Beam's ``FileSystems`` (local, GCS, S3, HDFS)."""

    def open(self, path: str) -> BinaryIO:
        return FileSystems.open(path, compression_type="uncompressed")

    def create(self, path: str) -> BinaryIO:
        return FileSystems.create(path, compression_type="uncompressed")

    def rename(self, src: str, dst: str) -> None:
        if FileSystems.exists(dst):
            FileSystems.delete([dst])
        FileSystems.rename([src], [dst])

    def delete(self, path: str) -> None:
        if FileSystems.exists(path):
            FileSystems.delete([path])

    def exists(self, path: str) -> bool:
        return FileSystems.exists(path)

    def makedirs(self, path: str) -> None:
        with contextlib.suppress(OSError):  # exists already; object stores have no directories
            FileSystems.mkdirs(path)

    def join(self, base: str, *parts: str) -> str:
        return FileSystems.join(base, *parts)

    def match(self, pattern: str) -> list[str]:
        return match_inputs(pattern)


def match_inputs(patterns: str) -> list[str]:
    """Sorted shard paths for comma-separated glob patterns; a pattern matching nothing is a UsageError."""
    paths: set[str] = set()
    for pattern in (p.strip() for p in patterns.split(",")):
        if not pattern:
            continue
        try:
            (result,) = FileSystems.match([pattern])
        except Exception as exc:  # Beam raises BeamIOError with per-pattern details
            raise UsageError(f"cannot list input '{pattern}': {exc}") from None
        found = [
            m.path for m in result.metadata_list if not m.path.rstrip("/").split("/")[-1].startswith(".")
        ]
        if not found:
            raise UsageError(f"input pattern '{pattern}' matches no files")
        paths.update(found)
    return sorted(paths)


class _ReadShardFn(beam.DoFn):
    def __init__(self, max_pixels: int, limits: dict[str, int]) -> None:
        self.max_pixels = max_pixels
        self.limits = limits
        self.read, self.rejected = Progress("samples_read"), Progress("samples_rejected")

    def process(self, path: str):
        try:
            stream = FileSystems.open(path, compression_type="uncompressed")
        except Exception as exc:
            yield beam.pvalue.TaggedOutput(
                REJECTED, Rejection(shard_key(path), RejectReason.CORRUPT_TAR, path, f"cannot open: {exc}")
            )
            return
        with stream:
            for record in read_shard(stream, path, self.max_pixels, **self.limits):
                if isinstance(record, Sample):
                    self.read.add()
                    yield record
                else:
                    self.rejected.add()
                    yield beam.pvalue.TaggedOutput(REJECTED, record)


class ReadShards(beam.PTransform):
    """Shard paths -> ``Sample`` main output and ``Rejection`` on the ``rejected`` tag.

    ``limits``: the size caps of :func:`copyguard.curation.shards.read_shard` (``max_member_bytes``,
    ``max_caption_bytes``, ``max_metadata_bytes``); left out, their defaults apply. Paths are reshuffled
    first so that shards spread over workers.
    """

    def __init__(self, max_pixels: int, **limits: int) -> None:
        super().__init__()
        self.max_pixels = max_pixels
        self.limits = limits

    def expand(self, paths):
        read = _ReadShardFn(self.max_pixels, self.limits)
        return (
            paths
            | "SpreadShards" >> beam.Reshuffle()
            | "ReadTar" >> beam.ParDo(read).with_outputs(REJECTED, main="samples")
        )


def io_limits(cfg: CurateConfig) -> dict[str, int]:
    """The reader's size caps from ``curate.io`` (member, caption and metadata bytes)."""
    io = cfg.io
    return {
        "max_member_bytes": io.max_member_bytes,
        "max_caption_bytes": io.max_caption_bytes,
        "max_metadata_bytes": io.max_metadata_bytes,
    }
