"""The curation manifest: one row per input sample with its fate, as Parquet.

Columns: ``key``, ``shard``, ``status`` (``kept`` | ``duplicate`` | ``rejected``), ``reason`` (empty for
kept samples), ``image_group`` and ``caption_group`` (ids shared by a group's duplicates: the group's
smallest key; null when not computed, e.g. for rejected samples), ``representative`` (the key kept for the
sample's group; null for rejected samples and for groups that kept nothing) and ``detail`` (a human-readable
note for rejections).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from copyguard.common.fileops import FileOps, LocalFileOps, atomic_write
from copyguard.curation.records import Rejection

__all__ = ["MANIFEST_SCHEMA", "STATUSES", "rejection_row", "write_manifest", "read_manifest"]

STATUSES = ("kept", "duplicate", "rejected")

MANIFEST_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("image_group", pa.string()),
        ("caption_group", pa.string()),
        ("representative", pa.string()),
        ("detail", pa.string()),
    ]
)


def rejection_row(rejection: Rejection) -> dict[str, Any]:
    return {
        "key": rejection.key,
        "shard": rejection.shard,
        "status": "rejected",
        "reason": str(rejection.reason),
        "image_group": None,
        "caption_group": None,
        "representative": None,
        "detail": rejection.detail,
    }


def _table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    ordered = sorted(rows, key=lambda r: (r["key"], r["shard"], r["status"], r["reason"]))
    columns = {name: [row.get(name) for row in ordered] for name in MANIFEST_SCHEMA.names}
    return pa.table(columns, schema=MANIFEST_SCHEMA)


def write_manifest(path: str, rows: Sequence[dict[str, Any]], fs: FileOps | None = None) -> None:
    """Write rows (sorted by key, so the bytes are reproducible) to a Parquet file, atomically."""
    buf = io.BytesIO()
    pq.write_table(_table(rows), buf, compression="zstd")
    atomic_write(path, buf.getvalue(), fs)


def read_manifest(paths: Iterable[str], fs: FileOps | None = None) -> list[dict[str, Any]]:
    """All rows of the given manifest files (a directory's ``*.parquet``), sorted by key."""
    fs = fs or LocalFileOps()
    rows: list[dict[str, Any]] = []
    for path in paths:
        with fs.open(path) as stream:
            rows.extend(pq.read_table(io.BytesIO(stream.read())).to_pylist())
    rows.sort(key=lambda r: (r["key"], r["shard"]))
    return rows
