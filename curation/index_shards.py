"""The sharded training index the distributed curation job writes: one FAISS index per partition.

Layout of ``OUT/index/``::

    index.json      format "copyguard-training-index-sharded": count, dim, embedder, partitions, and per
                    shard its name, count and the SHA-256 of its own index.json (which checksums its files)
    centroids.npy   float32 [partitions, dim]: the coarse quantizer every descriptor was assigned with
    background.npy  float32 [m, dim]: image_match's background descriptors (score normalization; m may be 0)
    part-00000/     a plain TrainingIndex directory (vectors.faiss, entries.parquet, index.json) holding the
    part-00001/     kept images whose home partition is that one, rows sorted by key
    ...

Each partition's worker writes its shard (:func:`write_shard`), a last step writes ``index.json``
(:func:`write_sharded_info`) from the shards' small summaries. :class:`ShardedIndex` answers the queries of
:class:`~copyguard.curation.index.TrainingIndex` (``nearest``, ``reconstruct``, ``duplicated_caption``,
``entry``...), with global rows numbered partition by partition. It opens shards lazily and keeps at most
``max_open`` of them, so a process never holds every vector of a large index: ``nearest`` probes the
``nprobe`` partitions whose centroids are closest to each query (an IVF search over shards; ``None``, the
default, probes all of them: exact). An incremental run reads only the shards of the partitions its new
descriptors fall in (:func:`read_shard`).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from copyguard.common.errors import UsageError
from copyguard.common.fileops import FileOps, LocalFileOps, atomic_write
from copyguard.curation.embedders import l2_normalize
from copyguard.curation.index import TrainingIndex
from copyguard.curation.index_format import (
    FORMAT_VERSION,
    INFO_FILE,
    SHARDED_FORMAT,
    IndexEntry,
    NearestResult,
    check_run_finished,
)

__all__ = [
    "BACKGROUND_FILE",
    "CENTROIDS_FILE",
    "ShardedIndex",
    "load_background",
    "load_index",
    "load_centroids",
    "read_shard",
    "shard_name",
    "write_shard",
    "write_sharded_info",
]

CENTROIDS_FILE = "centroids.npy"
BACKGROUND_FILE = "background.npy"


def shard_name(partition: int) -> str:
    return f"part-{partition:05d}"


def _read(fs: FileOps, path: str) -> bytes:
    with fs.open(path) as stream:
        return stream.read()


def write_shard(
    directory: str,
    partition: int,
    vectors: np.ndarray,
    entries: Sequence[IndexEntry],
    embedder: Mapping[str, Any],
    fs: FileOps | None = None,
) -> dict[str, Any]:
    """Write partition ``partition``'s shard (an exact flat index, rows sorted by key); returns the shard's
    line of the top-level ``index.json``."""
    fs = fs or LocalFileOps()
    path = fs.join(directory, shard_name(partition))
    TrainingIndex.build(vectors, list(entries), dict(embedder), kind="flat").save(path, fs=fs)
    info = _read(fs, fs.join(path, INFO_FILE))
    return {
        "partition": int(partition),
        "name": shard_name(partition),
        "count": len(entries),
        "sha256": hashlib.sha256(info).hexdigest(),
    }


def write_sharded_info(
    directory: str,
    shards: Sequence[Mapping[str, Any]],
    centroids: np.ndarray,
    embedder: Mapping[str, Any],
    fs: FileOps | None = None,
    extra: Mapping[str, Any] | None = None,
    background: np.ndarray | None = None,
) -> dict[str, Any]:
    """Write ``centroids.npy``, ``background.npy`` and the top-level ``index.json`` (last); returns the
    latter's content."""
    fs = fs or LocalFileOps()
    bg = np.zeros((0, int(embedder["dim"])), np.float32) if background is None else background
    bg_buf = io.BytesIO()
    np.save(bg_buf, np.ascontiguousarray(bg, dtype=np.float32), allow_pickle=False)
    atomic_write(fs.join(directory, BACKGROUND_FILE), bg_buf.getvalue(), fs)
    shards = sorted((dict(s) for s in shards), key=lambda s: s["partition"])
    if [s["partition"] for s in shards] != list(range(len(centroids))):
        raise RuntimeError(
            f"index shards {[s['partition'] for s in shards]} do not cover {len(centroids)} partitions"
        )
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(centroids, dtype=np.float32), allow_pickle=False)
    atomic_write(fs.join(directory, CENTROIDS_FILE), buf.getvalue(), fs)
    info = {
        "format": SHARDED_FORMAT,
        "format_version": FORMAT_VERSION,
        "count": sum(int(s["count"]) for s in shards),
        "dim": int(embedder["dim"]),
        "embedder": dict(embedder),
        "faiss": {"kind": "sharded", "partitions": len(shards), "metric": "inner_product"},
        "centroids": {"file": CENTROIDS_FILE, "sha256": hashlib.sha256(buf.getvalue()).hexdigest()},
        "background": {"file": BACKGROUND_FILE, "sha256": hashlib.sha256(bg_buf.getvalue()).hexdigest()},
        "shards": shards,
        **dict(extra or {}),
    }
    atomic_write(fs.join(directory, INFO_FILE), json.dumps(info, indent=2, sort_keys=True) + "\n", fs)
    return info


def _load_info(directory: str, fs: FileOps) -> dict[str, Any]:
    path = fs.join(directory, INFO_FILE)
    if not fs.exists(path):
        raise UsageError(f"no training index in {directory}: {INFO_FILE} is missing (run the curate job)")
    try:
        info = json.loads(_read(fs, path).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"training index {path} is corrupt: {exc}") from None
    if not isinstance(info, dict) or info.get("format") != SHARDED_FORMAT:
        raise UsageError(f"{path} is not a sharded copyguard training index")
    if info.get("format_version") != FORMAT_VERSION:
        raise UsageError(
            f"{path} has format version {info.get('format_version')}; this reads {FORMAT_VERSION}"
        )
    return info


def _load_centroids(directory: str, info: Mapping[str, Any], fs: FileOps) -> np.ndarray:
    data = _read(fs, fs.join(directory, CENTROIDS_FILE))
    if hashlib.sha256(data).hexdigest() != info["centroids"]["sha256"]:
        raise UsageError(
            f"training index file {fs.join(directory, CENTROIDS_FILE)} is corrupt (checksum mismatch)"
        )
    return np.load(io.BytesIO(data))


def load_centroids(directory: str, fs: FileOps | None = None) -> np.ndarray:
    """The coarse quantizer of a sharded index (an incremental run assigns its descriptors with it)."""
    fs = fs or LocalFileOps()
    return _load_centroids(directory, _load_info(directory, fs), fs)


def load_background(directory: str, fs: FileOps | None = None) -> np.ndarray:
    """The background descriptors a sharded index's run scored its pairs with (``[0, dim]`` when none)."""
    fs = fs or LocalFileOps()
    info = _load_info(directory, fs)
    data = _read(fs, fs.join(directory, BACKGROUND_FILE))
    if hashlib.sha256(data).hexdigest() != info["background"]["sha256"]:
        raise UsageError(
            f"training index file {fs.join(directory, BACKGROUND_FILE)} is corrupt (checksum mismatch)"
        )
    return np.load(io.BytesIO(data))


def read_shard(directory: str, partition: int, fs: FileOps | None = None) -> TrainingIndex:
    """One partition's shard of a sharded index, checked against the top-level checksum."""
    fs = fs or LocalFileOps()
    info = _load_info(directory, fs)
    return _open_shard(directory, info["shards"][partition], fs)


def _open_shard(directory: str, line: Mapping[str, Any], fs: FileOps) -> TrainingIndex:
    path = fs.join(directory, line["name"])
    if not fs.exists(fs.join(path, INFO_FILE)):
        raise UsageError(f"training index in {directory} is incomplete: shard {line['name']} is missing")
    if hashlib.sha256(_read(fs, fs.join(path, INFO_FILE))).hexdigest() != line["sha256"]:
        raise UsageError(f"training index shard {path} is corrupt (checksum mismatch)")
    shard = TrainingIndex.load(path, fs=fs)
    if len(shard) != int(line["count"]):
        raise UsageError(
            f"training index shard {path} is inconsistent: {len(shard)} rows, {line['count']} listed"
        )
    return shard


class ShardedIndex:
    """The queries of :class:`~copyguard.curation.index.TrainingIndex` over a sharded index (module doc)."""

    def __init__(
        self,
        directory: str,
        fs: FileOps,
        info: dict[str, Any],
        centroids: np.ndarray,
        nprobe: int | None,
        max_open: int,
    ) -> None:
        self._directory, self._fs, self._info, self._centroids = directory, fs, info, centroids
        self._lines = sorted(info["shards"], key=lambda s: s["partition"])
        counts = [int(s["count"]) for s in self._lines]
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.nprobe = nprobe
        self._max_open = max(1, int(max_open))
        self._open: OrderedDict[int, TrainingIndex] = OrderedDict()
        self._rows: dict[str, int] | None = None

    @classmethod
    def load(
        cls, directory: str, fs: FileOps | None = None, nprobe: int | None = None, max_open: int = 16
    ) -> ShardedIndex:
        """Open ``directory`` (checks the format and the centroids; shards are checked when opened)."""
        fs = fs or LocalFileOps()
        check_run_finished(directory, fs)
        info = _load_info(directory, fs)
        return cls(directory, fs, info, _load_centroids(directory, info, fs), nprobe, max_open)

    def shard(self, partition: int) -> TrainingIndex:
        """Partition ``partition``'s shard (opened on first use; the least recently used is closed)."""
        if partition in self._open:
            self._open.move_to_end(partition)
            return self._open[partition]
        shard = _open_shard(self._directory, self._lines[partition], self._fs)
        self._open[partition] = shard
        while len(self._open) > self._max_open:
            self._open.popitem(last=False)
        return shard

    # -- the TrainingIndex API -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def partitions(self) -> int:
        return len(self._lines)

    @property
    def centroids(self) -> np.ndarray:
        return self._centroids

    @property
    def info(self) -> dict[str, Any]:
        return json.loads(json.dumps({k: v for k, v in self._info.items() if k != "shards"}))

    @property
    def keys(self) -> list[str]:
        return [k for p in range(self.partitions) for k in self.shard(p).keys]

    @property
    def captions(self) -> list[str]:
        return [c for p in range(self.partitions) for c in self.shard(p).captions]

    @property
    def minhash(self) -> None:
        return None

    @property
    def table(self) -> pa.Table:
        return pa.concat_tables([self.shard(p).table for p in range(self.partitions)])

    def _locate(self, row: int) -> tuple[int, int]:
        if not 0 <= row < len(self):
            raise UsageError(f"row {row} is out of range for a training index of {len(self)} images")
        p = int(np.searchsorted(self._offsets, row, side="right") - 1)
        return p, row - int(self._offsets[p])

    def row(self, key: str) -> int:
        if self._rows is None:
            self._rows = {k: i for i, k in enumerate(self.keys)}
        try:
            return self._rows[key]
        except KeyError:
            raise UsageError(f"key {key!r} is not in the training index") from None

    def _resolve(self, key_or_row: str | int) -> tuple[int, int]:
        return self._locate(self.row(key_or_row) if isinstance(key_or_row, str) else int(key_or_row))

    def entry(self, key_or_row: str | int) -> IndexEntry:
        p, local = self._resolve(key_or_row)
        return self.shard(p).entry(local)

    def reconstruct(self, rows: int | Sequence[int] | np.ndarray) -> np.ndarray:
        if np.ndim(rows) == 0:
            p, local = self._resolve(int(rows))
            return self.shard(p).reconstruct(local)
        parts = [self.reconstruct(int(r)) for r in rows]
        return np.stack(parts) if parts else np.zeros((0, int(self._info["dim"])), np.float32)

    def embedding(self, key: str) -> np.ndarray:
        return self.reconstruct(self.row(key))

    def vectors(self) -> np.ndarray:
        parts = [self.shard(p).vectors() for p in range(self.partitions)]
        return np.concatenate(parts) if parts else np.zeros((0, int(self._info["dim"])), np.float32)

    def nearest(self, queries: np.ndarray, k: int = 1) -> NearestResult:
        """The ``k`` most similar training images per query, over the ``nprobe`` nearest partitions (all by
        default); ties go to the smaller global row."""
        dim = int(self._info["dim"])
        q = np.asarray(queries, dtype=np.float32)
        q = q[None, :] if q.ndim == 1 else q
        if q.ndim != 2 or q.shape[1] != dim:
            raise UsageError(f"queries must have shape (Q, {dim}), got {np.shape(queries)}")
        k = max(0, min(int(k), len(self)))
        n_q = len(q)
        sims = np.full((n_q, k), -np.inf, np.float32)
        idx = np.full((n_q, k), -1, np.int64)
        keys = np.full((n_q, k), None, object)
        groups = np.full((n_q, k), None, object)
        if k == 0 or n_q == 0:
            return NearestResult(keys, sims, idx, groups)
        q = np.ascontiguousarray(l2_normalize(q))
        probe = self.partitions if self.nprobe is None else min(self.nprobe, self.partitions)
        if probe >= self.partitions:
            probes = np.tile(np.arange(self.partitions), (n_q, 1))
        else:
            probes = np.argsort(-(q @ self._centroids.T), axis=1, kind="stable")[:, :probe]
        for p in np.unique(probes).tolist():
            if self._lines[p]["count"] == 0:
                continue
            rows = np.flatnonzero((probes == p).any(axis=1))
            res = self.shard(p).nearest(q[rows], k)
            glob = np.where(res.indices >= 0, res.indices + self._offsets[p], -1)
            all_s = np.concatenate([sims[rows], res.similarities], axis=1)
            all_i = np.concatenate([idx[rows], glob], axis=1)
            all_k = np.concatenate([keys[rows], res.keys], axis=1)
            all_g = np.concatenate([groups[rows], res.caption_groups], axis=1)
            big = np.iinfo(np.int64).max
            order = np.lexsort((np.where(all_i >= 0, all_i, big), -all_s), axis=1)[:, :k]
            sims[rows] = np.take_along_axis(all_s, order, 1)
            idx[rows] = np.take_along_axis(all_i, order, 1)
            keys[rows] = np.take_along_axis(all_k, order, 1)
            groups[rows] = np.take_along_axis(all_g, order, 1)
        return NearestResult(keys, sims, idx, groups)

    def image_group_rows(self, key_or_row: str | int) -> list[int]:
        group = self.entry(key_or_row).image_group
        out = []
        for p in range(self.partitions):
            shard = self.shard(p)
            for local, g in enumerate(shard.table.column("image_group").to_pylist()):
                if g == group:
                    out.append(int(self._offsets[p]) + local)
        return out

    def duplicated_caption(self, key_or_row: str | int, min_count: int = 2) -> str | None:
        """AMG's y_N (see :meth:`TrainingIndex.duplicated_caption`; curation always records the count)."""
        p, local = self._resolve(key_or_row)
        return self.shard(p).duplicated_caption(local, min_count)

    def check_compatible(self, embedder: Any, strict: bool = True) -> None:
        TrainingIndex.check_compatible(self, embedder, strict)  # type: ignore[arg-type]  # reads _info only


def load_index(
    directory: str, fs: FileOps | None = None, nprobe: int | None = None, max_open: int = 16
) -> TrainingIndex | ShardedIndex:
    """Open any training index: the curate job's sharded ``OUT/index`` as a :class:`ShardedIndex` (``nprobe``
    and ``max_open`` as in :meth:`ShardedIndex.load`), an index written by :meth:`TrainingIndex.save` as a
    :class:`~copyguard.curation.index.TrainingIndex`. Both answer ``nearest``, ``entry``, ``reconstruct``
    and ``duplicated_caption``. An unfinished curation run's index is refused."""
    fs = fs or LocalFileOps()
    check_run_finished(directory, fs)
    info_path = fs.join(directory, INFO_FILE)
    if fs.exists(info_path):
        try:
            sharded = json.loads(_read(fs, info_path).decode("utf-8")).get("format") == SHARDED_FORMAT
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            sharded = False  # TrainingIndex.load reports the corruption
        if sharded:
            return ShardedIndex.load(directory, fs=fs, nprobe=nprobe, max_open=max_open)
    return TrainingIndex.load(directory, fs=fs)
