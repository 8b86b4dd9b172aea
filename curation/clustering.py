"""Near-duplicate images: a FAISS similarity graph and chaining-safe clustering (Pizzi et al., CVPR 2022; Johnson et al., 2019).

Embeddings are L2-normalized float32 rows, so cosine = inner product.

- :func:`similarity_edges`: pairs with cosine >= threshold. Exact ``IndexFlatIP`` range search up to
  ``exact_max`` vectors; above, an IVF partition (spherical k-means, ``nlist ~ ivf_nlist_factor *
  sqrt(N)`` lists, trained on a seeded sample) searched with ``nprobe`` lists per vector, computed list by
  list with matrix products; on GPU FAISS, which has no range search, a k-NN graph cut at the threshold.
- :func:`cluster_components`: groups around representatives, so that chains of pairwise-similar images
  (a ~ b ~ c ~ ... with distant end points) do not collapse into one giant group.

Default threshold (``images.threshold`` = 0.75): SSCD's own calibration, copies at cosine > 0.75 with ~90%
precision on DISC2021 (Pizzi et al., CVPR 2022); 0.5 (the memorization papers' "memorized") is a
detection level, too loose for deleting training data. Measured on ``sample-data --preset small`` (64 px
photo tiles, seeds 0 and 1): planted re-encodes, resizes, crops and colour shifts score 0.6-1.0 with their
original, but distinct tiles of one texture-like photo (brick, hubble, rocket) reach 0.87, so a lower
threshold mostly adds false merges (pairwise F1 0.87 at 0.70, 0.965 at 0.75, 0.98 at 0.78); on full-size
real photos (scikit-image) unrelated images stay below 0.3 and most edits above 0.75.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np

from copyguard.common.errors import UsageError
from copyguard.common.runtime import progress_bar
from copyguard.curation.config import ImagesConfig
from copyguard.curation.union_find import group_ids

__all__ = [
    "cluster_components",
    "cluster_embeddings",
    "gpu_available",
    "group_ids",
    "knn_edges",
    "range_edges",
    "similarity_edges",
]

log = logging.getLogger(__name__)

_EPS = 1e-6  # FAISS range search keeps scores strictly above the radius
_PROGRESS_MIN = 50_000  # show a progress bar from this many queries on
_GPU_MAX_K = 2048  # GPU FAISS k-selection limit
# Training vectors per IVF list at least. FAISS's k-means asks for 39, which at 1e6 vectors (4,000 lists)
# means 156k training vectors and twice the k-means time; 20 per list reached 98% pair recall in
# benchmarks/bench_faiss.py.
_MIN_TRAIN_PER_LIST = 20
_KMEANS_ITER = 10  # IndexIVF's own default


def gpu_available() -> bool:
    """True when the installed FAISS has GPU support and sees at least one GPU."""
    try:
        return int(getattr(faiss, "get_num_gpus", lambda: 0)()) > 0
    except Exception:  # a CPU build or a broken CUDA install: no GPU
        return False


def _as_unit_rows(emb: np.ndarray) -> np.ndarray:
    x = np.array(emb, dtype=np.float32, copy=True, order="C")
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array [N, d], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or inf")
    faiss.normalize_L2(x)
    return x


def _batches(n: int, size: int, desc: str):
    starts = range(0, n, size)
    return progress_bar(starts, desc=desc, unit="batch", enabled=n >= _PROGRESS_MIN, leave=False)


def range_edges(index, x: np.ndarray, threshold: float, batch: int) -> list[tuple[np.ndarray, ...]]:
    """Every pair of ``x`` (rows) and ``index`` (ids) with inner product at or above ``threshold``, queried
    ``batch`` rows at a time: a list of ``(rows, ids, scores)`` array triples, one per batch."""
    parts = []
    for start in _batches(len(x), batch, "similarity (range)"):
        q = x[start : start + batch]
        lims, dist, idx = index.range_search(q, threshold - _EPS)
        rows = np.repeat(np.arange(start, start + len(q), dtype=np.int64), np.diff(lims).astype(np.int64))
        parts.append((rows, idx.astype(np.int64), dist.astype(np.float32)))
    return parts


def knn_edges(index, x: np.ndarray, k: int, batch: int) -> list[tuple[np.ndarray, ...]]:
    """The ``k`` nearest ids in ``index`` of each row of ``x`` (plus the row itself, at most the GPU's
    k-selection limit), ``batch`` rows at a time: ``(rows, ids, scores)`` triples, one per batch."""
    k = min(k + 1, len(x), _GPU_MAX_K)  # +1: a vector is its own nearest neighbour
    parts = []
    for start in _batches(len(x), batch, "similarity (k-NN)"):
        q = x[start : start + batch]
        dist, idx = index.search(q, k)
        rows = np.repeat(np.arange(start, start + len(q), dtype=np.int64), k)
        parts.append((rows, idx.reshape(-1).astype(np.int64), dist.reshape(-1).astype(np.float32)))
    return parts


def _ivf_shape(n: int, cfg: ImagesConfig) -> tuple[int, int]:
    """``(nlist, training sample size)``: ``nlist ~ ivf_nlist_factor * sqrt(N)``, with at least
    ``_MIN_TRAIN_PER_LIST`` training vectors per list; the sample is ``ivf_train_size`` or that minimum."""
    nlist = max(1, min(int(round(cfg.ivf_nlist_factor * math.sqrt(n))), n // _MIN_TRAIN_PER_LIST))
    return nlist, min(n, max(cfg.ivf_train_size, _MIN_TRAIN_PER_LIST * nlist))


def _train_sample(x: np.ndarray, n_train: int, seed: int) -> np.ndarray:
    if n_train >= len(x):
        return x
    rng = np.random.default_rng(seed)
    return x[np.sort(rng.choice(len(x), n_train, replace=False))]


def _ivf_index(x: np.ndarray, cfg: ImagesConfig, timings: dict[str, Any] | None = None):
    """A FAISS ``IndexIVFFlat`` over ``x`` (used for the GPU k-NN graph above ``exact_max``)."""
    n, d = x.shape
    nlist, n_train = _ivf_shape(n, cfg)
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = _KMEANS_ITER
    index.cp.min_points_per_centroid = _MIN_TRAIN_PER_LIST
    started = time.perf_counter()
    index.train(_train_sample(x, n_train, cfg.seed))
    trained = time.perf_counter()
    index.add(x)
    added = time.perf_counter()
    index.nprobe = min(cfg.nprobe, nlist)
    if timings is not None:
        timings.update(ivf_train_s=trained - started, ivf_add_s=added - trained, nlist=nlist, n_train=n_train)
    log.info(
        "IVF index: %d vectors, nlist=%d, nprobe=%d, trained on %d in %.1f s, added in %.1f s",
        n,
        nlist,
        index.nprobe,
        n_train,
        trained - started,
        added - trained,
    )
    return index, quantizer


def _ivf_join_edges(
    x: np.ndarray, threshold: float, cfg: ImagesConfig, timings: dict[str, Any]
) -> list[tuple[np.ndarray, ...]]:
    """Approximate range self-join with an IVF partition, computed list by list with matrix products.

    The same candidates as an ``IndexIVFFlat`` range search with ``nprobe`` (spherical k-means lists; every
    vector stored in its nearest list; a query scans its ``nprobe`` nearest lists), but inverted: for each
    list, one BLAS product of the queries that probe it with its members. FAISS scans each query's lists
    one vector at a time, bound by memory bandwidth: at 1e6 x 512-d, 2,000 lists and nprobe 8 on two busy
    cores its range search was estimated at 12 minutes, the list-major products took 3 (measured with
    ``benchmarks/bench_faiss.py``'s data).
    """
    n, d = x.shape
    nlist, n_train = _ivf_shape(n, cfg)
    nprobe = min(cfg.nprobe, nlist)
    started = time.perf_counter()
    kmeans = faiss.Kmeans(
        d,
        nlist,
        niter=_KMEANS_ITER,
        spherical=True,
        seed=cfg.seed + 1234,
        min_points_per_centroid=_MIN_TRAIN_PER_LIST,
    )
    kmeans.train(_train_sample(x, n_train, cfg.seed))
    trained = time.perf_counter()
    quantizer = faiss.IndexFlatIP(d)
    quantizer.add(kmeans.centroids)
    probes = np.empty((n, nprobe), dtype=np.int64)
    for start in _batches(n, 65_536, "IVF assignment"):
        probes[start : start + 65_536] = quantizer.search(x[start : start + 65_536], nprobe)[1]
    assigned = time.perf_counter()
    # Members of each list (nearest centroid) and the queries probing it, as CSR over list ids.
    members = np.argsort(probes[:, 0], kind="stable")
    member_start = np.searchsorted(probes[members, 0], np.arange(nlist + 1))
    flat = probes.reshape(-1)
    probing = np.argsort(flat, kind="stable")
    probe_start = np.searchsorted(flat[probing], np.arange(nlist + 1))
    probing //= nprobe  # flat position -> query row
    del probes, flat
    parts = []
    cut = np.float32(threshold - _EPS)
    for lst in progress_bar(
        range(nlist), desc="IVF join", unit="list", enabled=n >= _PROGRESS_MIN, leave=False
    ):
        ids = members[member_start[lst] : member_start[lst + 1]]
        queries = probing[probe_start[lst] : probe_start[lst + 1]]
        if not len(ids) or not len(queries):
            continue
        block = x[ids].T
        for q0 in range(0, len(queries), cfg.query_batch):
            q = queries[q0 : q0 + cfg.query_batch]
            sims = x[q] @ block
            r, c = np.nonzero(sims >= cut)
            if len(r):
                parts.append((q[r], ids[c], sims[r, c]))
    joined = time.perf_counter()
    sizes = np.diff(member_start)
    timings.update(
        ivf_train_s=trained - started,
        ivf_assign_s=assigned - trained,
        ivf_join_s=joined - assigned,
        nlist=nlist,
        nprobe=nprobe,
        n_train=n_train,
        largest_list=int(sizes.max()),
    )
    log.info(
        "IVF join: %d vectors, nlist=%d (largest %d), nprobe=%d, trained on %d in %.1f s, assigned in %.1f s,"
        " joined in %.1f s",
        n,
        nlist,
        sizes.max(),
        nprobe,
        n_train,
        trained - started,
        assigned - trained,
        joined - assigned,
    )
    return parts or [(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))]


def _index_edges(
    x: np.ndarray, threshold: float, cfg: ImagesConfig, mode: str, use_gpu: bool, times: dict[str, Any]
) -> list[tuple[np.ndarray, ...]]:
    """Edges from a FAISS index: exact range search, or the k-NN graph (flat or IVF index, GPU or CPU)."""
    started = time.perf_counter()
    keep_alive = None
    if mode == "exact" or len(x) <= cfg.exact_max:
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
    else:
        index, keep_alive = _ivf_index(x, cfg, times)
    times["index_s"] = time.perf_counter() - started
    if mode == "exact":
        return range_edges(index, x, threshold, cfg.query_batch)
    if use_gpu:
        res = faiss.StandardGpuResources()
        nprobe = getattr(index, "nprobe", None)
        index = faiss.index_cpu_to_gpu(res, 0, index)
        if nprobe is not None:
            index.nprobe = nprobe
        keep_alive = (keep_alive, res)
    parts = knn_edges(index, x, cfg.knn_k, cfg.query_batch)
    del keep_alive
    return parts


def similarity_edges(
    emb: np.ndarray,
    threshold: float,
    cfg: ImagesConfig | None = None,
    mode: str | None = None,
    timings: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs with cosine >= ``threshold``: ``(i, j, sim)`` with ``i < j``, sorted by ``(i, j)``.

    ``mode`` forces a search (``"exact"``, ``"ivf"``, ``"knn"``: exact k-NN on CPU, the GPU's graph); by
    default: exact up to ``cfg.exact_max`` vectors, IVF above, and a k-NN graph (``cfg.knn_k`` neighbours,
    flat or IVF index) on GPU FAISS. k-NN and IVF are approximate: a pair is kept when either side finds the
    other. Rows are re-normalized (a copy), so slightly off-unit input is fine. ``timings``, when given,
    receives the mode used and the seconds of each step: ``search_s`` (the whole search, index included),
    ``edges_s`` (deduplicating the edge list); for IVF ``ivf_train_s``, ``ivf_assign_s``, ``ivf_join_s``;
    for a FAISS index ``index_s`` (benchmarks read them).
    """
    cfg = cfg or ImagesConfig()
    x = _as_unit_rows(emb)
    n = len(x)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    if n < 2:
        return empty
    use_gpu = gpu_available() if cfg.use_gpu == "auto" else bool(cfg.use_gpu)
    if use_gpu and not gpu_available():
        raise UsageError("curate.images.use_gpu is true but FAISS sees no GPU (install faiss-gpu-cu12)")
    if mode is None:
        mode = "knn" if use_gpu else ("exact" if n <= cfg.exact_max else "ivf")
    if mode not in ("exact", "ivf", "knn"):
        raise ValueError(f"mode must be 'exact', 'ivf' or 'knn', got {mode!r}")

    times: dict[str, Any] = {} if timings is None else timings
    times["mode"] = mode
    started = time.perf_counter()
    if mode == "ivf":
        parts = _ivf_join_edges(x, threshold, cfg, times)
    else:
        parts = _index_edges(x, threshold, cfg, mode, use_gpu, times)
    edges_start = time.perf_counter()
    times["search_s"] = edges_start - started

    rows = np.concatenate([p[0] for p in parts])
    cols = np.concatenate([p[1] for p in parts])
    sims = np.concatenate([p[2] for p in parts])
    ok = (cols >= 0) & (cols != rows) & (sims >= threshold)
    rows, cols, sims = rows[ok], cols[ok], sims[ok]
    i, j = np.minimum(rows, cols), np.maximum(rows, cols)
    code = i * n + j
    order = np.lexsort((-sims, code))  # per pair, the highest score first
    code, sims = code[order], sims[order]
    first = np.ones(len(code), dtype=bool)
    first[1:] = code[1:] != code[:-1]
    code, sims = code[first], sims[first]
    times["edges_s"] = time.perf_counter() - edges_start
    return code // n, code % n, sims.astype(np.float32)


def cluster_components(
    n: int, i: np.ndarray, j: np.ndarray, sim: np.ndarray, cfg: ImagesConfig | None = None
) -> np.ndarray:
    """Group ``n`` items around representatives; returns int64 labels, the smallest index of each group.

    Chaining protection (cluster around representatives, with a stricter threshold to join):

    1. Keep edges with ``sim >= cfg.threshold``.
    2. Visit nodes by degree (descending), then summed similarity (descending, rounded to 1e-4), then
       index. A node becomes a representative unless a neighbour already is one (a greedy maximal
       independent set, so the hub of a planted group, linked to all its copies, is chosen first).
    3. Every other node joins its most similar neighbouring representative (ties: smaller index). So every
       member is a direct near-duplicate of its representative: a chain a~b~c~d~... of length L splits into
       about L/2 groups instead of one, where union-find would return one component.
    4. A representative left alone (all its neighbours were taken) joins the group of its most similar
       neighbour only if that similarity is >= ``cfg.join_threshold``. Such a member is never a
       representative, so this adds at most one hop: every member is within two edges of its representative.

    Labels depend on the node indices (ties): sort the items by key first, as :func:`cluster_embeddings`
    does, and the output is independent of the input order.
    """
    cfg = cfg or ImagesConfig()
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    sim = np.asarray(sim, dtype=np.float64)
    if not (len(i) == len(j) == len(sim)):
        raise ValueError("i, j and sim must have the same length")
    if len(i) and (min(i.min(), j.min()) < 0 or max(i.max(), j.max()) >= n):
        raise ValueError(f"edge index out of range for n={n}")
    ok = (sim >= cfg.threshold) & (i != j)
    i, j, sim = i[ok], j[ok], sim[ok]
    labels = np.arange(n, dtype=np.int64)
    if not len(i):
        return labels

    # CSR adjacency of the undirected graph.
    src = np.concatenate([i, j])
    dst = np.concatenate([j, i])
    w = np.concatenate([sim, sim])
    order = np.lexsort((dst, src))
    src, dst, w = src[order], dst[order], w[order]
    degree = np.bincount(src, minlength=n)
    strength = np.round(np.bincount(src, weights=w, minlength=n), 4)
    start = np.concatenate([[0], np.cumsum(degree)])

    # 2. representatives: greedy maximal independent set by (degree desc, strength desc, index).
    active = np.flatnonzero(degree)
    visit = active[np.lexsort((active, -strength[active], -degree[active]))]
    is_rep = np.zeros(n, dtype=bool)
    blocked = np.zeros(n, dtype=bool)
    for u in visit.tolist():
        if blocked[u]:
            continue
        is_rep[u] = True
        blocked[dst[start[u] : start[u + 1]]] = True

    # 3. members join their most similar representative neighbour (ties: smaller index).
    rep_of = np.where(is_rep, np.arange(n), -1)
    edge_to_rep = is_rep[dst] & ~is_rep[src]
    s, d, ww = src[edge_to_rep], dst[edge_to_rep], w[edge_to_rep]
    best = np.lexsort((d, -ww, s))
    s, d = s[best], d[best]
    first = np.ones(len(s), dtype=bool)
    first[1:] = s[1:] != s[:-1]
    rep_of[s[first]] = d[first]

    # 4. lone representatives join the group of their best neighbour at the stricter join threshold.
    group_size = np.bincount(rep_of[rep_of >= 0], minlength=n)
    lone = is_rep & (group_size == 1)
    joined = rep_of.copy()
    for u in np.flatnonzero(lone).tolist():
        nb, nw = dst[start[u] : start[u + 1]], w[start[u] : start[u + 1]]
        if not len(nb):
            continue
        k = int(np.lexsort((nb, -nw))[0])
        if nw[k] >= cfg.join_threshold and group_size[rep_of[nb[k]]] > 1:
            joined[u] = rep_of[nb[k]]

    labels[active] = joined[active]
    # Name every group by its smallest member index.
    smallest = np.full(n, n, dtype=np.int64)
    np.minimum.at(smallest, labels, np.arange(n, dtype=np.int64))
    return smallest[labels]


def cluster_embeddings(
    keys: Sequence[str],
    emb: np.ndarray,
    cfg: ImagesConfig | None = None,
    mode: str | None = None,
    timings: dict[str, Any] | None = None,
) -> list[str]:
    """Image groups for ``keys``: each key's group id (its group's smallest key), independent of order.

    Sorts by key, builds the similarity graph (:func:`similarity_edges`), clusters it
    (:func:`cluster_components`) and names groups with :func:`group_ids`. ``timings`` (optional) receives
    :func:`similarity_edges`' step times plus ``similarity_s``, ``cluster_s`` and ``edges`` (the count).
    """
    cfg = cfg or ImagesConfig()
    if len(keys) != len(emb):
        raise ValueError(f"{len(keys)} keys but {len(emb)} embeddings")
    if len(set(keys)) != len(keys):
        raise ValueError("keys must be unique")
    order = sorted(range(len(keys)), key=keys.__getitem__)
    sorted_keys = [keys[k] for k in order]
    times: dict[str, Any] = {} if timings is None else timings
    started = time.perf_counter()
    i, j, sim = similarity_edges(np.asarray(emb)[order], cfg.threshold, cfg, mode=mode, timings=times)
    clustered = time.perf_counter()
    labels = cluster_components(len(keys), i, j, sim, cfg)
    times.update(similarity_s=clustered - started, cluster_s=time.perf_counter() - clustered, edges=len(i))
    ids = group_ids(sorted_keys, labels)
    out = [""] * len(keys)
    for pos, gid in zip(order, ids, strict=True):
        out[pos] = gid
    return out
