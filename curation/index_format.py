"""The training index's on-disk format and record types (shared by :mod:`copyguard.curation.index` and
:mod:`copyguard.curation.index_shards`): file names, the entries' Parquet schema, :class:`IndexEntry`,
:class:`NearestResult` and small (de)serialization helpers."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from copyguard.common.errors import UsageError
from copyguard.curation.embedders import ImageEmbedder, embedder_info

__all__ = [
    "ENTRIES_FILE",
    "FORMAT",
    "INCOMPLETE_MARKER",
    "SUCCESS_MARKER",
    "FORMAT_VERSION",
    "INFO_FILE",
    "MINHASH_FILE",
    "SHARDED_FORMAT",
    "VECTORS_FILE",
    "IndexEntry",
    "NearestResult",
    "check_run_finished",
]

FORMAT = "copyguard-training-index"
SHARDED_FORMAT = "copyguard-training-index-sharded"  # index_shards.py: one index per partition
FORMAT_VERSION = 1
VECTORS_FILE, ENTRIES_FILE, MINHASH_FILE, INFO_FILE = (
    "vectors.faiss",
    "entries.parquet",
    "minhash.npy",
    "index.json",
)
# The curation job writes OUT/_INCOMPLETE before any output and replaces it with OUT/_SUCCESS as its last step.
INCOMPLETE_MARKER, SUCCESS_MARKER = "_INCOMPLETE", "_SUCCESS"


def check_run_finished(directory: str, fs: Any) -> None:
    """UsageError when the index ``directory`` sits in a curation output whose run did not finish
    (``_INCOMPLETE`` beside it). An index saved anywhere else (no marker) is not concerned."""
    path = directory.rstrip("/") or "/"
    head, sep, _ = path.rpartition("/")
    parent = (head or "/") if sep else "."
    if fs.exists(fs.join(parent, INCOMPLETE_MARKER)):
        raise UsageError(
            f"index of an unfinished curation run (no {SUCCESS_MARKER} in {parent}): rerun with --resume"
        )


_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("caption", pa.string()),
        ("caption_group", pa.string()),
        ("image_group", pa.string()),
        ("caption_group_size", pa.int64()),
        ("image_group_size", pa.int64()),
        ("dup_caption", pa.string()),
        ("dup_caption_count", pa.int64()),
    ]
)


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One kept training sample, row-aligned with its vector.

    Groups are curation's cluster ids (any string; empty means a singleton named by the key) and sizes count
    *all* input samples of the group, dropped ones included. ``dup_caption``/``dup_caption_count``, when the
    curation job fills them, are AMG's exact y_N candidate (Chen et al., CVPR 2024): the most common caption
    group among all members of this row's image group (one caption of it) and how many members carry it.
    """

    key: str
    caption: str
    caption_group: str = ""
    image_group: str = ""
    caption_group_size: int = 1
    image_group_size: int = 1
    dup_caption: str | None = None
    dup_caption_count: int = 0


@dataclass(frozen=True)
class NearestResult:
    """``[Q, k]`` arrays, best first. Where fewer than k rows exist (IVF), keys are None and sims -inf."""

    keys: np.ndarray
    similarities: np.ndarray
    indices: np.ndarray
    caption_groups: np.ndarray


def _to_entry(item: IndexEntry | Mapping[str, Any], i: int) -> IndexEntry:
    if not isinstance(item, IndexEntry):
        try:
            item = IndexEntry(**item)
        except TypeError as exc:
            raise UsageError(f"index entry {i}: {exc}") from None
    if not isinstance(item.key, str) or not item.key:
        raise UsageError(f"index entry {i}: key must be a non-empty string, got {item.key!r}")
    if item.caption_group_size < 1 or item.image_group_size < 1 or item.dup_caption_count < 0:
        raise UsageError(f"index entry {item.key!r}: group sizes must be >= 1 and counts >= 0")
    return IndexEntry(
        key=item.key,
        caption=str(item.caption),
        caption_group=str(item.caption_group) or item.key,
        image_group=str(item.image_group) or item.key,
        caption_group_size=int(item.caption_group_size),
        image_group_size=int(item.image_group_size),
        dup_caption=item.dup_caption,
        dup_caption_count=int(item.dup_caption_count),
    )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _embedder_dict(embedder: ImageEmbedder | Mapping[str, Any]) -> dict[str, Any]:
    info = dict(embedder) if isinstance(embedder, Mapping) else embedder_info(embedder)
    missing = {"name", "dim", "input_size"} - set(info)
    if missing:
        raise UsageError(f"embedder info lacks {', '.join(sorted(missing))}")
    return info


def _table_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
    sink = io.BytesIO()
    np.save(sink, array, allow_pickle=False)
    return sink.getvalue()
