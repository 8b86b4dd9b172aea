"""Partitioned near-duplicate image search: the pure functions behind the distributed Beam stage.

The approach of SemDeDup (Abbas et al., 2023) and of Stable Diffusion 3's data recipe (Esser et al., 2024):
train a coarse quantizer (spherical k-means) on a fixed-size sample of descriptors, send every descriptor to
its nearest centroid (its *home* partition) and, as a query only, to the next ones within a margin
(:func:`assign`), then search each partition exactly (:func:`partition_edges`). A pair is found when one end's
home partition is among the other end's probed partitions: the candidate set of an IVF index probing
``partition_probe`` lists, computed partition by partition, so no process ever holds more than one
partition's vectors.

Determinism (every runner, any number of workers, any arrival order):

- the k-means sample is the ``partition_sample`` keys with the smallest :func:`sample_rank` (a hash of the
  key), sorted, not a random sample; k-means runs single-threaded with a fixed seed;
- :func:`assign` works on one descriptor at a time (a fixed summation order);
- every candidate pair's cosine is recomputed in float64 from the two float32 descriptors
  (:func:`exact_cosine`), so a pair's score does not depend on the batch (BLAS blocking) it was found in.

How two descriptors are scored is :mod:`copyguard.curation.image_match`'s business: the search keeps raw
cosines at or above :func:`~copyguard.curation.image_match.candidate_floor` and thresholds
:func:`~copyguard.curation.image_match.edge_scores` on them.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import faiss
import numpy as np

from copyguard.curation.config import ImagesConfig
from copyguard.curation.image_match import candidate_floor, edge_scores

__all__ = [
    "assign",
    "exact_cosine",
    "n_partitions",
    "partition_edges",
    "sample_rank",
    "train_centroids",
]

_KMEANS_ITER = 10
_EPS = 1e-6
_BLOCK = 2048  # query rows per matrix product (bounds the [block, members] similarity matrix)


def sample_rank(key: str) -> int:
    """A stable 64-bit hash of ``key``: the k-means sample is the keys with the smallest ranks."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")


def n_partitions(count: int, cfg: ImagesConfig) -> int:
    """Partitions for ``count`` descriptors: ``ceil(count / partition_size)``, capped so that every centroid
    has at least ``partition_min_train`` training vectors in the sample (``partition_sample``)."""
    if count <= 0:
        return 1
    wanted = math.ceil(count / cfg.partition_size)
    cap = max(1, min(count, cfg.partition_sample) // cfg.partition_min_train)
    return max(1, min(wanted, cap))


def train_centroids(sample: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Spherical k-means centroids ``[k, d]`` (unit rows) of ``sample`` (rows in a fixed order).

    ``k = 1`` gives the sample's normalized mean without k-means (every descriptor lands in partition 0).
    Single-threaded FAISS k-means: the same sample gives the same centroids on any machine of the pool.
    """
    x = np.ascontiguousarray(sample, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"k-means needs a non-empty [n, d] sample, got shape {x.shape}")
    if k <= 1:
        mean = x.astype(np.float64).sum(0)
        norm = np.linalg.norm(mean)
        return (mean / norm if norm > 0 else np.eye(1, x.shape[1])[0]).astype(np.float32)[None, :]
    k = min(k, len(x))
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        km = faiss.Kmeans(
            x.shape[1], k, niter=_KMEANS_ITER, spherical=True, seed=seed + 1234, min_points_per_centroid=1
        )
        km.train(x)
    finally:
        faiss.omp_set_num_threads(threads)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def assign(vector: np.ndarray, centroids: np.ndarray, margin: float, probe: int) -> list[int]:
    """Partitions of one descriptor: its home (nearest centroid) first, then up to ``probe - 1`` others
    whose centroid similarity is within ``margin`` of the home's, most similar first (ties: lower id)."""
    sims = centroids.astype(np.float64) @ np.asarray(vector, dtype=np.float64)
    order = np.lexsort((np.arange(len(sims)), -sims))[: max(1, probe)]
    best = sims[order[0]]
    return [int(p) for p in order if sims[p] >= best - margin]


def exact_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise float64 dot products of ``a[m, d]`` and ``b[m, d]`` (as float32): batch-independent scores."""
    return np.einsum("ij,ij->i", a.astype(np.float64), b.astype(np.float64)).astype(np.float32)


def partition_edges(
    member_keys: Sequence[str],
    members: np.ndarray,
    member_stats: np.ndarray,
    query_keys: Sequence[str],
    queries: np.ndarray,
    query_stats: np.ndarray,
    cfg: ImagesConfig,
    *,
    self_join: bool = True,
) -> list[tuple[str, str, float]]:
    """Edges ``(a, b, score)`` with ``a < b`` and ``score >= cfg.threshold`` inside one partition.

    ``members`` are the descriptors whose home is this partition; ``queries`` are visitors (their home is
    another partition). Pairs searched: member-member (when ``self_join``) and query-member, exactly, with
    matrix products of at most ``_BLOCK`` rows. Candidates at or above the raw-cosine floor are re-scored with
    :func:`exact_cosine` and :func:`~copyguard.curation.image_match.edge_scores`.
    """
    m_keys = list(member_keys)
    if not m_keys:
        return []
    floor = np.float32(candidate_floor(cfg) - _EPS)
    m = np.ascontiguousarray(members, dtype=np.float32)
    out: list[tuple[str, str, float]] = []

    def scan(keys: list[str], x: np.ndarray, stats: np.ndarray, upper: bool) -> None:
        for start in range(0, len(keys), _BLOCK):
            sims = x[start : start + _BLOCK] @ m.T
            r, c = np.nonzero(sims >= floor)
            r = r + start
            if upper:  # member-member: each unordered pair once, no self-pairs
                keep = c > r
                r, c = r[keep], c[keep]
            if not len(r):
                continue
            cos = exact_cosine(x[r], m[c])
            scores = edge_scores(cos, stats[r], member_stats[c], cfg)
            for i, j, s in zip(r.tolist(), c.tolist(), np.asarray(scores).tolist(), strict=True):
                if s >= cfg.threshold and keys[i] != m_keys[j]:
                    a, b = sorted((keys[i], m_keys[j]))
                    out.append((a, b, float(s)))

    if self_join:
        scan(m_keys, m, np.asarray(member_stats, dtype=np.float32), upper=True)
    if len(query_keys):
        q = np.ascontiguousarray(queries, dtype=np.float32)
        scan(list(query_keys), q, np.asarray(query_stats, dtype=np.float32), upper=False)
    return out
