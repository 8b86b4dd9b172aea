"""The training-set index: FAISS over the SSCD embeddings of the kept training images.

The curation job writes ``OUT/index/``; mitigation (AMG's nearest training image n_0 and duplicated caption
y_N, Chen et al., CVPR 2024) and the audit (memorization metrics of Chen et al., CVPR 2024 and Somepalli et
al., NeurIPS 2023) read it back. Row ``i`` of the FAISS index is row ``i`` of the entries (no ID map); rows
are sorted by key, so the same kept samples give the same bytes whatever order a Beam runner delivered them
in.

Files (all written atomically; ``index.json`` last, listing the others with their SHA-256)::

    vectors.faiss    faiss.serialize_index: IndexFlatIP (exact) or IVF-Flat, inner product on unit vectors
    entries.parquet  key, caption, caption_group, image_group, caption_group_size, image_group_size,
                     dup_caption, dup_caption_count (see IndexEntry)
    minhash.npy      optional uint64 [N, num_perm] MinHash signatures given to build() (the curation job
                     writes none: its sharded index, index_shards.py, re-bands captions from their text)
    index.json       format/version, counts, embedder (name, dim, input_size, preprocessing, weights), faiss
                     settings, MinHash parameters, file checksums

API::

    idx = TrainingIndex.build(embeddings, entries, embedder, minhash=None, kind="flat")
    idx.save(directory, fs=None);  idx = TrainingIndex.load(directory, fs=None)
    idx.check_compatible(embedder)                 # UsageError when the query embedder differs
    res = idx.nearest(queries, k=1)                # NearestResult(keys, similarities, indices, caption_groups)
    idx.duplicated_caption(key_or_row, min_count)  # AMG's duplicated caption y_N, or None
    idx.embedding(key); idx.reconstruct(rows); idx.vectors(); idx.entry(key_or_row); idx.row(key)
    idx.merge(other)                               # union of two indexes (keys must not collide)
    len(idx); idx.keys; idx.captions; idx.minhash; idx.info

``kind="flat"`` is exact and fine up to ~1e5-1e6 vectors (FAISS, Johnson et al., 2019); ``kind="ivf"``
(IVF-Flat, ``nlist`` ~ ``nlist_factor * sqrt(N)``, trained on at most ``train_size`` sampled vectors)
answers large indexes faster but approximately: a query sees only its ``nprobe`` nearest lists, so a true
nearest neighbour in another list is missed. IVF bytes are deterministic for the same data, faiss version and
thread count.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields
from typing import Any, Literal

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from copyguard.common.errors import UsageError
from copyguard.common.fileops import FileOps, LocalFileOps, atomic_write
from copyguard.curation.embedders import ImageEmbedder, l2_normalize
from copyguard.curation.index_format import (
    _SCHEMA,
    ENTRIES_FILE,
    FORMAT,
    FORMAT_VERSION,
    INFO_FILE,
    MINHASH_FILE,
    SHARDED_FORMAT,
    VECTORS_FILE,
    IndexEntry,
    NearestResult,
    _embedder_dict,
    _npy_bytes,
    _sha256,
    _table_bytes,
    _to_entry,
    check_run_finished,
)

__all__ = ["FORMAT_VERSION", "IndexEntry", "NearestResult", "TrainingIndex"]

logger = logging.getLogger(__name__)


class TrainingIndex:
    """Nearest training image, its key, caption and groups. Build with :meth:`build` or :meth:`load`."""

    def __init__(self, index: faiss.Index, table: pa.Table, info: dict[str, Any], minhash: np.ndarray | None):
        self._index = index
        self._table = table
        self._info = info
        self._minhash = minhash
        self._cols = {name: table.column(name).to_pylist() for name in _SCHEMA.names}
        # object arrays with a trailing None, so faiss's -1 (no result) maps to None
        self._lookup = {c: np.array([*self._cols[c], None], dtype=object) for c in ("key", "caption_group")}
        self._rows: dict[str, int] | None = None
        self._groups: dict[str, list[int]] | None = None

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        entries: Sequence[IndexEntry | Mapping[str, Any]],
        embedder: ImageEmbedder | Mapping[str, Any],
        minhash: np.ndarray | None = None,
        *,
        minhash_info: Mapping[str, Any] | None = None,
        kind: Literal["flat", "ivf", "auto"] = "flat",
        exact_max: int = 200_000,
        nlist: int | None = None,
        nlist_factor: float = 8.0,
        nprobe: int = 32,
        train_size: int = 200_000,
        seed: int = 0,
    ) -> TrainingIndex:
        """Index ``embeddings`` [N, dim] (row i belongs to ``entries[i]``); rows are re-sorted by key.

        ``embedder``: the embedder that made the vectors, or its :func:`embedder_info` dict. ``minhash``:
        optional [N, num_perm] signatures, described by ``minhash_info`` (e.g. the MinHash config).
        ``kind="auto"`` picks flat up to ``exact_max`` vectors and IVF above.
        """
        emb_info = _embedder_dict(embedder)
        vectors = np.asarray(embeddings, dtype=np.float32)
        items = [_to_entry(item, i) for i, item in enumerate(entries)]
        n = len(items)
        if vectors.ndim != 2 or vectors.shape != (n, int(emb_info["dim"])):
            raise UsageError(
                f"embeddings must have shape ({n}, {emb_info['dim']}) to match the entries and the "
                f"embedder, got {vectors.shape}"
            )
        if not np.isfinite(vectors).all():
            raise UsageError("embeddings contain NaN or infinite values")
        keys = [item.key for item in items]
        if len(set(keys)) != n:
            dupes = sorted(k for k, c in Counter(keys).items() if c > 1)[:5]
            raise UsageError(f"duplicate keys in the index entries: {', '.join(dupes)}")
        order = np.array(sorted(range(n), key=keys.__getitem__), dtype=np.int64)
        items = [items[i] for i in order]
        vectors = l2_normalize(vectors[order]) if n else vectors
        if minhash is not None:
            minhash = np.asarray(minhash)
            if minhash.ndim != 2 or minhash.shape[0] != n:
                raise UsageError(f"minhash must have shape ({n}, num_perm), got {minhash.shape}")
            minhash = np.ascontiguousarray(minhash[order].astype(np.uint64, copy=False))
        if kind == "auto":
            kind = "flat" if n <= exact_max else "ivf"
        if kind == "flat" or n == 0:
            index, faiss_info = faiss.IndexFlatIP(vectors.shape[1]), {"kind": "flat"}
        elif kind == "ivf":
            index, faiss_info = cls._train_ivf(vectors, nlist, nlist_factor, nprobe, train_size, seed)
        else:
            raise UsageError(f"unknown index kind {kind!r}; choose flat, ivf or auto")
        index.add(vectors)
        table = pa.Table.from_pylist([asdict(item) for item in items], schema=_SCHEMA)
        info = cls._make_info(n, emb_info, {**faiss_info, "metric": "inner_product"}, minhash, minhash_info)
        return cls(index, table, info, minhash)

    @staticmethod
    def _train_ivf(
        vectors: np.ndarray, nlist: int | None, factor: float, nprobe: int, train_size: int, seed: int
    ) -> tuple[faiss.Index, dict[str, Any]]:
        n, dim = vectors.shape
        sample = vectors
        if n > train_size:
            rows = np.sort(np.random.default_rng(seed).choice(n, size=train_size, replace=False))
            sample = vectors[rows]
        # faiss wants >= 39 training points per list; fewer lists beat badly trained ones.
        nlist = max(1, min(int(nlist or round(factor * math.sqrt(n))), len(sample) // 39))
        index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        index.train(sample)
        index.make_direct_map()
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = min(int(nprobe), nlist)
        return index, {"kind": "ivf", "nlist": nlist, "nprobe": ivf.nprobe, "train_size": len(sample)}

    @staticmethod
    def _make_info(
        n: int,
        emb_info: dict[str, Any],
        faiss_info: dict[str, Any],
        minhash: np.ndarray | None,
        minhash_info: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "count": n,
            "dim": int(emb_info["dim"]),
            "embedder": emb_info,
            "faiss": faiss_info,
            "minhash": None
            if minhash is None
            else {"num_perm": int(minhash.shape[1]), "params": dict(minhash_info or {})},
        }

    # -- persistence ----------------------------------------------------------------------------------------
    def save(self, directory: str, fs: FileOps | None = None) -> None:
        """Write the files atomically, ``index.json`` (with checksums) last.

        Saving over an existing index is safe for later readers; one reading *during* the save may see a
        checksum mismatch (a UsageError), never a silently mixed index.
        """
        fs = fs or LocalFileOps()
        fs.makedirs(directory)
        blobs = {
            VECTORS_FILE: faiss.serialize_index(self._index).tobytes(),
            ENTRIES_FILE: _table_bytes(self._table),
        }
        if self._minhash is not None:
            blobs[MINHASH_FILE] = _npy_bytes(self._minhash)
        files = {}
        for name, data in blobs.items():
            atomic_write(fs.join(directory, name), data, fs)
            files[name] = {"sha256": _sha256(data), "bytes": len(data)}
        info = {**self._info, "files": files}
        atomic_write(fs.join(directory, INFO_FILE), json.dumps(info, indent=2, sort_keys=True) + "\n", fs)
        stale = fs.join(directory, MINHASH_FILE)
        if self._minhash is None and fs.exists(stale):
            fs.delete(stale)
        logger.info("training index with %d images written to %s", len(self), directory)

    @classmethod
    def load(cls, directory: str, fs: FileOps | None = None) -> TrainingIndex:
        """Read an index written by :meth:`save`; checks format, version, checksums and counts.

        The curation job's ``OUT/index`` is sharded (one index per partition): open it, or any index, with
        :func:`copyguard.curation.load_index`, which returns a
        :class:`~copyguard.curation.index_shards.ShardedIndex` answering the same queries."""
        fs = fs or LocalFileOps()
        check_run_finished(directory, fs)  # OUT/index of a killed or failed curation run: refused
        info_path = fs.join(directory, INFO_FILE)
        if not fs.exists(info_path):
            raise UsageError(f"no training index in {directory}: {INFO_FILE} is missing (run the curate job)")
        try:
            info = json.loads(cls._read(fs, info_path).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsageError(f"training index {info_path} is corrupt: {exc}") from None
        if isinstance(info, dict) and info.get("format") == SHARDED_FORMAT:
            raise UsageError(
                f"{directory} is a sharded training index (the curate job's OUT/index): open it with "
                "copyguard.curation.load_index(path)"
            )
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise UsageError(f"{info_path} is not a copyguard training index")
        version = info.get("format_version")
        if version != FORMAT_VERSION:
            raise UsageError(
                f"{info_path} has format version {version}; this copyguard reads {FORMAT_VERSION}"
            )
        blobs = {}
        files = info.get("files")
        if not isinstance(files, dict) or not all(isinstance(m, dict) for m in files.values()):
            raise UsageError(f"training index {info_path} is corrupt: no valid file list")
        for name, meta in files.items():
            path = fs.join(directory, name)
            if not fs.exists(path):
                raise UsageError(f"training index in {directory} is incomplete: {name} is missing")
            blobs[name] = data = cls._read(fs, path)
            if _sha256(data) != meta.get("sha256"):
                raise UsageError(f"training index file {path} is corrupt (checksum mismatch)")
        if VECTORS_FILE not in blobs or ENTRIES_FILE not in blobs:
            raise UsageError(
                f"training index in {directory} is incomplete: {INFO_FILE} lists no vectors/entries"
            )
        try:
            index = faiss.deserialize_index(np.frombuffer(blobs[VECTORS_FILE], dtype=np.uint8))
            table = pq.read_table(io.BytesIO(blobs[ENTRIES_FILE])).cast(_SCHEMA)
            minhash = np.load(io.BytesIO(blobs[MINHASH_FILE])) if MINHASH_FILE in blobs else None
        except Exception as exc:
            raise UsageError(f"training index in {directory} cannot be read: {exc}") from None
        n = info.get("count")
        if index.ntotal != n or table.num_rows != n or index.d != info.get("dim"):
            raise UsageError(f"training index in {directory} is inconsistent: counts or dim disagree")
        if (minhash is None) != (info.get("minhash") is None) or (minhash is not None and len(minhash) != n):
            raise UsageError(f"training index in {directory} is inconsistent: MinHash signatures")
        info.pop("files", None)
        if info.get("faiss", {}).get("kind") == "ivf":
            faiss.extract_index_ivf(index).nprobe = int(info["faiss"]["nprobe"])
        return cls(index, table, info, minhash)

    @staticmethod
    def _read(fs: FileOps, path: str) -> bytes:
        with fs.open(path) as stream:
            return stream.read()

    def __getstate__(self) -> dict[str, Any]:
        return {
            "index": faiss.serialize_index(self._index),
            "table": self._table,
            "info": self._info,
            "minhash": self._minhash,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        index = faiss.deserialize_index(state["index"])
        self.__init__(index, state["table"], state["info"], state["minhash"])

    # -- queries --------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def info(self) -> dict[str, Any]:
        """What ``index.json`` holds (without the file checksums)."""
        return json.loads(json.dumps(self._info))

    @property
    def keys(self) -> list[str]:
        return list(self._cols["key"])

    @property
    def captions(self) -> list[str]:
        return list(self._cols["caption"])

    @property
    def minhash(self) -> np.ndarray | None:
        return self._minhash

    @property
    def table(self) -> pa.Table:
        """The entries as a pyarrow table, row-aligned with the vectors."""
        return self._table

    def row(self, key: str) -> int:
        """Row of ``key``; UsageError when absent."""
        if self._rows is None:
            self._rows = {k: i for i, k in enumerate(self._cols["key"])}
        try:
            return self._rows[key]
        except KeyError:
            raise UsageError(f"key {key!r} is not in the training index") from None

    def _resolve(self, key_or_row: str | int) -> int:
        if isinstance(key_or_row, str):
            return self.row(key_or_row)
        row = int(key_or_row)
        if not 0 <= row < len(self):
            raise UsageError(f"row {row} is out of range for a training index of {len(self)} images")
        return row

    def entry(self, key_or_row: str | int) -> IndexEntry:
        row = self._resolve(key_or_row)
        return IndexEntry(**{f.name: self._cols[f.name][row] for f in fields(IndexEntry)})

    def reconstruct(self, rows: int | Sequence[int] | np.ndarray) -> np.ndarray:
        """Stored unit vectors of ``rows`` ([dim] for one row, [len(rows), dim] otherwise)."""
        if np.ndim(rows) == 0:
            return self._index.reconstruct(self._resolve(int(rows)))
        ids = np.asarray([self._resolve(int(r)) for r in rows], dtype=np.int64)
        if len(ids) == 0:
            return np.zeros((0, self._index.d), dtype=np.float32)
        return self._index.reconstruct_batch(ids)

    def embedding(self, key: str) -> np.ndarray:
        return self.reconstruct(self.row(key))

    def vectors(self) -> np.ndarray:
        """All stored vectors, [N, dim]."""
        if len(self) == 0:
            return np.zeros((0, self._index.d), dtype=np.float32)
        return self._index.reconstruct_n(0, len(self))

    def nearest(self, queries: np.ndarray, k: int = 1) -> NearestResult:
        """The ``k`` most similar training images (cosine) for each query embedding ([dim] or [Q, dim]).

        Queries are L2-normalized here; pass ``tensor.detach().cpu().numpy()`` for torch tensors.
        ``k`` is capped at the index size.
        """
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self._index.d:
            raise UsageError(f"queries must have shape (Q, {self._index.d}), got {np.shape(queries)}")
        k = max(0, min(int(k), len(self)))
        if k == 0 or len(q) == 0:
            empty = np.empty((len(q), k))
            return NearestResult(
                empty.astype(object), empty.astype(np.float32), empty.astype(np.int64), empty.astype(object)
            )
        sims, idx = self._index.search(np.ascontiguousarray(l2_normalize(q)), k)
        valid = idx >= 0
        keys, groups = self._lookup["key"][idx], self._lookup["caption_group"][idx]
        sims = np.where(valid, sims, -np.inf).astype(np.float32)
        return NearestResult(keys, sims, idx.astype(np.int64), groups)

    def image_group_rows(self, key_or_row: str | int) -> list[int]:
        """Rows of the kept training images in the same image-duplicate group (the row itself included)."""
        if self._groups is None:
            self._groups = {}
            for i, group in enumerate(self._cols["image_group"]):
                self._groups.setdefault(group, []).append(i)
        return list(self._groups[self._cols["image_group"][self._resolve(key_or_row)]])

    def duplicated_caption(self, key_or_row: str | int, min_count: int = 2) -> str | None:
        """AMG's y_N for training image ``key_or_row``: a caption duplicated among its near-duplicates.

        Rule: (1) when curation recorded ``dup_caption_count`` for the row (exact: the most common caption
        group among all members of its image group, dropped ones included), the support is that count and the
        caption is ``dup_caption``. (2) Otherwise, over the *kept* rows g of the same image group, the support
        of g's caption is ``min(image_group_size, caption_group_size(g))``, an upper bound on how many input
        samples paired this image with that caption (exact when one group contains the other); the largest
        support wins, ties to the smallest key. The caption is returned when its support is >= ``min_count``,
        else None. The public AMG code used "more than 20 of the 1000 nearest neighbours", i.e. 21.
        """
        row = self._resolve(key_or_row)
        if self._cols["dup_caption_count"][row] > 0 and self._cols["dup_caption"][row] is not None:
            support, caption = self._cols["dup_caption_count"][row], self._cols["dup_caption"][row]
        else:
            best = None
            for g in self.image_group_rows(row):
                s = min(self._cols["image_group_size"][g], self._cols["caption_group_size"][g])
                cand = (-s, self._cols["key"][g], self._cols["caption"][g])
                best = cand if best is None or cand < best else best
            support, caption = -best[0], best[2]
        return caption if support >= min_count else None

    # -- compatibility and incremental runs ------------------------------------------------------------------
    def check_compatible(self, embedder: ImageEmbedder | Mapping[str, Any], strict: bool = True) -> None:
        """Raise UsageError if ``embedder`` cannot query this index.

        A different dim always fails. A different name or input size fails when ``strict`` (embeddings of
        another model or resolution are not comparable at the same thresholds) and is logged otherwise, e.g.
        for a torch port of the same SSCD weights. Different weight checksums are only logged.
        """
        mine, theirs = self._info["embedder"], _embedder_dict(embedder)
        if int(theirs["dim"]) != int(mine["dim"]):
            raise UsageError(
                f"embedder {theirs['name']} gives {theirs['dim']}-d vectors; the index holds {mine['dim']}-d"
            )
        for field in ("name", "input_size"):
            if theirs[field] != mine[field]:
                msg = f"the index was built with {field}={mine[field]!r}, the embedder has {theirs[field]!r}"
                if strict:
                    raise UsageError(msg)
                logger.warning(msg)
        sha_mine, sha_theirs = (
            (mine.get("weights") or {}).get("sha256"),
            (theirs.get("weights") or {}).get("sha256"),
        )
        if sha_mine and sha_theirs and sha_mine != sha_theirs:
            logger.warning(
                "embedder %s: model weights differ from those that built the index", theirs["name"]
            )

    def merge(self, other: TrainingIndex) -> TrainingIndex:
        """A new index holding both (rows sorted by key). (The curation job's incremental runs update its
        sharded index partition by partition instead, see :mod:`copyguard.curation.index_shards`.)

        Keys must not collide and embedders must match. A flat result equals :meth:`build` on the union; an
        IVF result keeps this index's trained lists (no retraining) and adds every vector again.
        """
        self.check_compatible(other._info["embedder"])
        clash = sorted(set(self._cols["key"]) & set(other._cols["key"]))
        if clash:
            raise UsageError(
                f"cannot merge training indexes: {len(clash)} keys in both, e.g. {', '.join(clash[:3])}"
            )
        if (self._minhash is None) != (other._minhash is None):
            raise UsageError("cannot merge training indexes: only one of them has MinHash signatures")
        minhash = None
        if self._minhash is not None:
            if (
                self._minhash.shape[1] != other._minhash.shape[1]
                or self._info["minhash"] != other._info["minhash"]
            ):
                raise UsageError("cannot merge training indexes: their MinHash parameters differ")
            minhash = np.concatenate([self._minhash, other._minhash])
        vectors = np.concatenate([self.vectors(), other.vectors()])
        entries = [self.entry(i) for i in range(len(self))] + [other.entry(i) for i in range(len(other))]
        merged = TrainingIndex.build(
            vectors,
            entries,
            self._info["embedder"],
            minhash,
            minhash_info=(self._info["minhash"] or {}).get("params"),
        )
        if self._info["faiss"]["kind"] != "ivf":
            return merged
        index = faiss.clone_index(self._index)
        index.reset()
        index.add(merged.vectors())
        return TrainingIndex(
            index, merged._table, {**merged._info, "faiss": dict(self._info["faiss"])}, merged._minhash
        )
