"""FAISS image clustering at scale: time and pair recall of the production config (Pizzi et al., CVPR 2022; Johnson et al., 2019).

    python -m benchmarks.bench_faiss [--quick] [--machine TAG] [--out DIR] [--sizes 1e4,1e5,1e6]
                                     [--exact-sample 2000] [--ivf-at-all-sizes] [--set KEY=VALUE ...]

Goal: 1e6 descriptors clustered (similarity graph + groups) in under 10 minutes on a CPU with a planted
pair recall >= 0.95.

Data (:func:`synthetic`, seeded): ``N`` 512-d float32 unit vectors with the structure of SSCD
descriptors of a real collection, so that the IVF coarse quantizer sees clusters and uneven lists:

- ``K = clip(4 * sqrt(N), 64, 4000)`` random unit *centres* (4,000 at 1e6) with log-normal popularity
  (sigma 1: some centres hold ten times more images than others);
- each vector ``x = a * centre + sqrt(1 - a^2) * g`` with ``g`` a random unit vector and ``a ~ U(0.2, 0.7)``,
  so vectors of one centre have cosine ~``a1 * a2`` (0.04-0.5: "similar content", like unrelated photos of
  one subject under SSCD) and vectors of different centres ~0;
- planted near-duplicate pairs on 5% of the vectors (``N / 40`` pairs at random positions): the copy is
  ``c * x + sqrt(1 - c^2) * h`` with ``h`` a random unit vector orthogonal to ``x``, so its cosine with
  ``x`` is exactly ``c ~ U(0.76, 0.98)`` (above the 0.75 threshold: every planted pair is a true edge).

Per size, with the shipped ``curate.images`` config (``--set images.nprobe=16`` to try others):

- *production*: ``cluster_embeddings`` (exact ``IndexFlatIP`` range search up to ``exact_max``, IVF above):
  total time and its parts (IVF k-means training, assignment of every vector to its ``nprobe`` nearest
  lists, the list-by-list join; or the exact search; then the edge list and the clustering);
- *recall*: the fraction of planted pairs found as edges, and the fraction that end in one group; at sizes
  the exact search can afford (<= 1e5) also the IVF path forced on the same data, its time and its edge
  recall against the exact edges; at 1e6, ``--exact-sample`` random vectors are searched exactly against
  all others and the IVF edges of those rows are compared with them.

GPU FAISS is not measured here unless FAISS sees a GPU. Writes ``benchmarks/results/<machine>/faiss.json``.
About 10 minutes at 1e4-1e6 on two cores; 1e6 needs about 8 GB of memory.
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import resource
import sys
import time
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

from benchmarks.common import (
    begin,
    finish,
    load_average,
    script_main,
)
from copyguard.common.config import load_config
from copyguard.curation import clustering
from copyguard.curation.clustering import gpu_available
from copyguard.curation.config import CurateConfig, ImagesConfig

log = logging.getLogger("benchmarks.bench_faiss")
DIM = 512
GOAL_SECONDS = 600.0
GOAL_RECALL = 0.95
PAIR_FRACTION = 0.05  # of the vectors are in planted pairs
COPY_COSINE = (0.76, 0.98)
CENTRE_WEIGHT = (0.2, 0.7)
CHUNK = 65_536


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _random_unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    return _unit(rng.standard_normal((n, d), dtype=np.float32))


def n_centres(n: int) -> int:
    return int(np.clip(round(4 * math.sqrt(n)), 64, 4000))


def synthetic(n: int, seed: int = 0, d: int = DIM) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """``(x [n, d] float32 unit rows, pair_i, pair_j, info)``: clustered vectors with planted pairs."""
    rng = np.random.default_rng(seed)
    k = n_centres(n)
    centres = _random_unit(rng, k, d)
    popularity = rng.lognormal(0.0, 1.0, k)
    assign = rng.choice(k, size=n, p=popularity / popularity.sum())
    x = np.empty((n, d), dtype=np.float32)
    for start in tqdm(range(0, n, CHUNK), desc="generate", unit="chunk", disable=n < 10 * CHUNK, leave=False):
        stop = min(n, start + CHUNK)
        a = rng.uniform(*CENTRE_WEIGHT, stop - start).astype(np.float32)[:, None]
        g = _random_unit(rng, stop - start, d)
        x[start:stop] = _unit(a * centres[assign[start:stop]] + np.sqrt(1 - a * a) * g)
    pairs = int(n * PAIR_FRACTION / 2)
    chosen = rng.permutation(n)[: 2 * pairs]
    pi, pj = chosen[:pairs], chosen[pairs:]
    c = rng.uniform(*COPY_COSINE, pairs).astype(np.float32)[:, None]
    for start in range(0, pairs, CHUNK):
        sl = slice(start, start + CHUNK)
        base = x[pi[sl]]
        h = rng.standard_normal(base.shape, dtype=np.float32)
        h = _unit(h - (h * base).sum(1, keepdims=True) * base)  # orthogonal to the original
        x[pj[sl]] = _unit(c[sl] * base + np.sqrt(1 - c[sl] ** 2) * h)
    info = {
        "centres": k,
        "centre_popularity": "log-normal(0, 1)",
        "centre_weight": list(CENTRE_WEIGHT),
        "planted_pairs": pairs,
        "copy_cosine": list(COPY_COSINE),
        "seed": seed,
    }
    return x, np.minimum(pi, pj), np.maximum(pi, pj), info


def _codes(i: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    return np.minimum(i, j).astype(np.int64) * n + np.maximum(i, j).astype(np.int64)


def pair_recall(found: np.ndarray, wanted: np.ndarray) -> float:
    """Fraction of the pair codes ``wanted`` present in ``found``."""
    return float(np.isin(wanted, found).mean()) if len(wanted) else 1.0


def _timing(t: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in t.items()}


def run_production(
    x: np.ndarray, keys: list[str], cfg: ImagesConfig, mode: str | None = None
) -> tuple[dict[str, Any], list[str], np.ndarray]:
    """``cluster_embeddings`` timed; also returns its groups and its similarity edges (as pair codes).

    The edges are captured by wrapping ``clustering.similarity_edges`` for the call (a pass-through), so
    the search runs once.
    """
    captured: list[tuple[np.ndarray, ...]] = []
    inner = clustering.similarity_edges

    def capture(*args: Any, **kwargs: Any):
        out = inner(*args, **kwargs)
        captured.append(out)
        return out

    timings: dict[str, Any] = {}
    load = load_average()
    clustering.similarity_edges = capture
    try:
        start = time.perf_counter()
        groups = clustering.cluster_embeddings(keys, x, cfg, mode=mode, timings=timings)
        total = time.perf_counter() - start
    finally:
        clustering.similarity_edges = inner
    i, j, _ = captured[0]  # indices into the key-sorted rows: keys are generated in sorted order
    result = {"total_s": round(total, 2), "load_average_before": load, **_timing(timings)}
    return result, groups, _codes(i, j, len(x))


def edges_of(x: np.ndarray, cfg: ImagesConfig, mode: str | None) -> tuple[np.ndarray, dict[str, Any]]:
    """``similarity_edges`` alone (pair codes and step times)."""
    timings: dict[str, Any] = {}
    start = time.perf_counter()
    i, j, _ = clustering.similarity_edges(x, cfg.threshold, cfg, mode=mode, timings=timings)
    timings["total_s"] = time.perf_counter() - start
    return _codes(i, j, len(x)), _timing(timings)


def sampled_exact_edges(x: np.ndarray, rows: np.ndarray, threshold: float) -> np.ndarray:
    """Exact edges of the vectors ``rows`` with every other vector (codes), without copying ``x``."""
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(np.ascontiguousarray(x[rows]))
    parts = []
    for start in tqdm(range(0, len(x), CHUNK), desc="exact sample", unit="chunk", leave=False):
        lims, _, idx = index.range_search(x[start : start + CHUNK], threshold - 1e-6)
        src = np.repeat(np.arange(start, start + len(lims) - 1), np.diff(lims).astype(np.int64))
        dst = rows[idx]
        keep = src != dst
        parts.append(_codes(src[keep], dst[keep], len(x)))
    return np.unique(np.concatenate(parts))


def bench_size(
    n: int, cfg: ImagesConfig, exact_sample: int, ivf_everywhere: bool, seed: int = 0
) -> dict[str, Any]:
    """Generate ``n`` vectors, cluster them with the production config, measure recall."""
    start = time.perf_counter()
    x, pi, pj, info = synthetic(n, seed)
    info["generate_s"] = round(time.perf_counter() - start, 1)
    planted = _codes(pi, pj, n)
    keys = [f"v{k:08d}" for k in range(n)]
    production_mode = "exact" if n <= cfg.exact_max else "ivf"
    log.info("n=%d: production path %s, %d planted pairs", n, production_mode, len(planted))
    prod, groups, codes = run_production(x, keys, cfg)
    gid = np.asarray([int(g[1:]) for g in groups])
    result: dict[str, Any] = {
        "n": n,
        "data": info,
        "production": prod,
        "production_mode": production_mode,
        "planted_group_recall": round(float((gid[pi] == gid[pj]).mean()), 4),
    }
    del groups, gid
    result["planted_edge_recall"] = round(pair_recall(codes, planted), 4)
    result["edges"] = int(len(codes))
    result["non_planted_edges"] = int(len(codes) - np.isin(codes, planted).sum())
    if production_mode == "exact" and ivf_everywhere:
        ivf_codes, ivf_t = edges_of(x, cfg, "ivf")
        result["ivf_forced"] = {
            **ivf_t,
            "edge_recall_vs_exact": round(pair_recall(ivf_codes, codes), 4),
            "planted_edge_recall": round(pair_recall(ivf_codes, planted), 4),
            "false_edges": int(len(np.setdiff1d(ivf_codes, codes))),
        }
    if production_mode == "ivf" and exact_sample:
        rng = np.random.default_rng(seed + 1)
        rows = np.sort(rng.choice(n, min(exact_sample, n), replace=False))
        t0 = time.perf_counter()
        exact = sampled_exact_edges(x, rows, cfg.threshold)
        mine = codes[np.isin(codes // n, rows) | np.isin(codes % n, rows)]
        result["exact_sample"] = {
            "rows": int(len(rows)),
            "exact_edges": int(len(exact)),
            "edge_recall_vs_exact": round(pair_recall(mine, exact), 4),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    total = prod["total_s"]
    recall = result["planted_edge_recall"]
    result["verdict"] = {
        "goal_seconds": GOAL_SECONDS if n >= 1_000_000 else None,
        "goal_recall": GOAL_RECALL,
        "passes": bool(recall >= GOAL_RECALL and (n < 1_000_000 or total < GOAL_SECONDS)),
    }
    log.info(
        "n=%d: %.1f s (%s), planted pair recall %.4f (groups %.4f)",
        n,
        total,
        production_mode,
        recall,
        result["planted_group_recall"],
    )
    del x
    gc.collect()
    return result


def run(
    machine: str,
    sizes: list[int],
    overrides: list[str],
    exact_sample: int,
    ivf_everywhere: bool,
    quick: bool = False,
    argv: list[str] | None = None,
) -> dict[str, Any]:
    report = begin("faiss", "benchmarks.bench_faiss", argv, machine, quick, faiss.omp_get_max_threads())
    cfg = load_config(CurateConfig, "curate", None, [f"curate.{o}" for o in overrides]).images
    results = [bench_size(n, cfg, exact_sample, ivf_everywhere) for n in sizes]
    report.update(
        config=cfg.model_dump(mode="json"),
        overrides=overrides,
        faiss={
            "version": faiss.__version__,
            "omp_threads": faiss.omp_get_max_threads(),
            "gpu": gpu_available(),
            "gpu_note": None if gpu_available() else "GPU FAISS: not measured, no GPU available",
        },
        sizes=results,
        peak_rss_gib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    )
    return finish(report)


def _size(text: str) -> int:
    return int(float(text))


def _add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="1e4,1e5,1e6", help="comma-separated vector counts")
    parser.add_argument("--exact-sample", type=int, default=2000, help="rows checked exactly above exact_max")
    parser.add_argument(
        "--no-ivf-forced", action="store_true", help="skip the forced IVF run at exact-search sizes"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="curate.images override, e.g. images.nprobe=16",
    )


def _summary(report: dict[str, Any]) -> str:
    return "\n".join(
        f"n={r['n']}: {r['production']['total_s']} s ({r['production_mode']}), "
        f"planted pair recall {r['planted_edge_recall']}, groups {r['planted_group_recall']}"
        for r in report["sizes"]
    )


def main(argv: list[str] | None = None) -> int:
    def measure(args: argparse.Namespace) -> dict[str, Any]:
        sizes = [2000, 20_000] if args.quick else [_size(s) for s in args.sizes.split(",") if s.strip()]
        overrides = list(args.overrides)
        if args.quick:
            overrides.append("images.exact_max=5000")  # so the quick run also takes the IVF path
        return run(
            args.machine, sizes, overrides, args.exact_sample, not args.no_ivf_forced, args.quick, argv
        )

    return script_main(argv, __doc__, "faiss", _add_args, measure, _summary)


if __name__ == "__main__":
    sys.exit(main())
