"""FAISS image clustering at scale: time and planted-pair recall of the shipped ``curate.images`` config.

    python -m benchmarks.bench_faiss [--quick] [--machine TAG] [--out DIR] [--sizes 1e4,1e5,1e6]
                                     [--exact-sample 2000] [--no-ivf-forced] [--set KEY=VALUE ...]

Method: docs/benchmark-methods.md#bench_faiss. Writes ``benchmarks/results/<machine>/faiss.json``.
"""

from __future__ import annotations

import argparse
import gc
import logging
import resource
import sys
import time
from typing import Any

import faiss
import numpy as np

from benchmarks.common import begin, finish, load_average, script_main
from copyguard.common.config import load_config
from copyguard.curation import clustering
from copyguard.curation.clustering import gpu_available
from copyguard.curation.config import CurateConfig, ImagesConfig
from copyguard.pipelines.lab.synthetic import pair_codes, pair_recall, planted_descriptors

log = logging.getLogger("benchmarks.bench_faiss")
GOAL_SECONDS, GOAL_RECALL = 600.0, 0.95  # at 1e6 descriptors on a CPU
CHUNK = 65_536


def _rounded(t: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in t.items()}


def run_production(x: np.ndarray, keys: list[str], cfg: ImagesConfig) -> tuple[dict, list[str], np.ndarray]:
    """``cluster_embeddings`` timed; also its groups and its similarity edges as pair codes, captured by
    wrapping ``clustering.similarity_edges`` for the call (a pass-through: the search runs once)."""
    captured: list[tuple[np.ndarray, ...]] = []
    inner = clustering.similarity_edges

    def capture(*args: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        captured.append(inner(*args, **kwargs))
        return captured[-1]

    clustering.similarity_edges = capture
    timings: dict[str, Any] = {}
    load = load_average()
    try:
        start = time.perf_counter()
        groups = clustering.cluster_embeddings(keys, x, cfg, timings=timings)
        total = time.perf_counter() - start
    finally:
        clustering.similarity_edges = inner
    i, j, _ = captured[0]  # indices into the key-sorted rows: keys are generated in sorted order
    prod = {"total_s": round(total, 2), "load_average_before": load, **_rounded(timings)}
    return prod, groups, pair_codes(i, j, len(x))


def edges_of(x: np.ndarray, cfg: ImagesConfig, mode: str | None) -> tuple[np.ndarray, dict[str, Any]]:
    """``similarity_edges`` alone (pair codes and step times)."""
    timings: dict[str, Any] = {}
    start = time.perf_counter()
    i, j, _ = clustering.similarity_edges(x, cfg.threshold, cfg, mode=mode, timings=timings)
    timings["total_s"] = time.perf_counter() - start
    return pair_codes(i, j, len(x)), _rounded(timings)


def sampled_exact_edges(x: np.ndarray, rows: np.ndarray, threshold: float) -> np.ndarray:
    """Exact edges of the vectors ``rows`` with every other vector (codes), without copying ``x``."""
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(np.ascontiguousarray(x[rows]))
    src, idx, _ = (
        np.concatenate(p) for p in zip(*clustering.range_edges(index, x, threshold, CHUNK), strict=True)
    )
    keep = src != rows[idx]
    return np.unique(pair_codes(src[keep], rows[idx][keep], len(x)))


def bench_size(
    n: int, cfg: ImagesConfig, exact_sample: int, ivf_everywhere: bool, seed: int = 0
) -> dict[str, Any]:
    """Generate ``n`` vectors, cluster them with the production config, measure recall."""
    start = time.perf_counter()
    x, pi, pj, info = planted_descriptors(n, seed)
    info["generate_s"] = round(time.perf_counter() - start, 1)
    planted, mode = pair_codes(pi, pj, n), "exact" if n <= cfg.exact_max else "ivf"
    log.info("n=%d: production path %s, %d planted pairs", n, mode, len(planted))
    prod, groups, codes = run_production(x, [f"v{k:08d}" for k in range(n)], cfg)
    gid = np.asarray([int(g[1:]) for g in groups])
    result: dict[str, Any] = {"n": n, "data": info, "production": prod, "production_mode": mode,
        "planted_group_recall": round(float((gid[pi] == gid[pj]).mean()), 4),
        "planted_edge_recall": round(pair_recall(codes, planted), 4), "edges": int(len(codes)),
        "non_planted_edges": int(len(codes) - np.isin(codes, planted).sum())}  # fmt: skip
    del groups, gid
    if mode == "exact" and ivf_everywhere:
        ivf_codes, ivf_t = edges_of(x, cfg, "ivf")
        result["ivf_forced"] = {**ivf_t, "edge_recall_vs_exact": round(pair_recall(ivf_codes, codes), 4),
            "planted_edge_recall": round(pair_recall(ivf_codes, planted), 4),
            "false_edges": int(len(np.setdiff1d(ivf_codes, codes)))}  # fmt: skip
    if mode == "ivf" and exact_sample:
        rows = np.sort(np.random.default_rng(seed + 1).choice(n, min(exact_sample, n), replace=False))
        t0 = time.perf_counter()
        exact = sampled_exact_edges(x, rows, cfg.threshold)
        mine = codes[np.isin(codes // n, rows) | np.isin(codes % n, rows)]
        result["exact_sample"] = {"rows": int(len(rows)), "exact_edges": int(len(exact)),
            "edge_recall_vs_exact": round(pair_recall(mine, exact), 4),
            "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    recall, big = result["planted_edge_recall"], n >= 1_000_000
    result["verdict"] = {"goal_seconds": GOAL_SECONDS if big else None, "goal_recall": GOAL_RECALL,
        "passes": bool(recall >= GOAL_RECALL and (not big or prod["total_s"] < GOAL_SECONDS))}  # fmt: skip
    log.info("n=%d: %.1f s (%s), planted pair recall %.4f (groups %.4f)", n, prod["total_s"], mode, recall,
             result["planted_group_recall"])  # fmt: skip
    del x
    gc.collect()
    return result


def measure(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [2000, 20_000] if args.quick else [int(float(s)) for s in args.sizes.split(",") if s.strip()]
    # --quick: a low exact_max, so that the quick run also takes the IVF path
    overrides = [*args.overrides, *(["images.exact_max=5000"] if args.quick else [])]
    threads = faiss.omp_get_max_threads()
    report = begin("faiss", "benchmarks.bench_faiss", args.argv, args.machine, args.quick, threads)
    cfg = load_config(CurateConfig, "curate", None, [f"curate.{o}" for o in overrides]).images
    results = [bench_size(n, cfg, args.exact_sample, not args.no_ivf_forced) for n in sizes]
    note = None if gpu_available() else "GPU FAISS: not measured, no GPU available"
    report.update(config=cfg.model_dump(mode="json"), overrides=overrides,
                  faiss={"version": faiss.__version__, "omp_threads": threads, "gpu": gpu_available(), "gpu_note": note},
                  sizes=results, peak_rss_gib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2))  # fmt: skip
    return finish(report)


def _add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="1e4,1e5,1e6", help="comma-separated vector counts")
    parser.add_argument("--exact-sample", type=int, default=2000, help="rows checked exactly above exact_max")
    parser.add_argument("--no-ivf-forced", action="store_true", help="skip the forced IVF run at exact sizes")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="curate.images override, e.g. images.nprobe=16")  # fmt: skip


def _summary(report: dict[str, Any]) -> str:
    return "\n".join(f"n={r['n']}: {r['production']['total_s']} s ({r['production_mode']}), planted pair recall "
                     f"{r['planted_edge_recall']}, groups {r['planted_group_recall']}" for r in report["sizes"])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return script_main(argv, __doc__, "faiss", _add_args, measure, _summary)


if __name__ == "__main__":
    sys.exit(main())
