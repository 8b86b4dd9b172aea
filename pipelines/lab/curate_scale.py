"""Scale evidence for the distributed curation job: its global stages on synthetic SSCD-like descriptors.

    python -m copyguard.pipelines.lab.curate_scale [--quick] [--machine TAG] [--out DIR] [--sizes 1e5,1e6]
        [--baseline-max 1e6] [--workers 2] [--append]

Per N, :func:`~copyguard.pipelines.lab.synthetic.planted_descriptors` saved to a ``.npy`` file run through
the job's global stages (:func:`~copyguard.pipelines.curate_graph.curate_lights`) on Beam's local runner with
``--workers`` SDK worker processes (:func:`run_distributed`), and, up to ``--baseline-max``, through the
single-process path (:func:`single_worker`, in a subprocess): wall seconds, peak RSS and planted pair recall.
Writes ``<out>/<machine>/curate_scale.json``; docs/benchmark-methods.md#curate_scale has the method.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from copyguard.curation.config import CurateConfig
from copyguard.pipelines.lab.results import (
    add_result_args,
    begin_result,
    finish_result,
    result_path,
    setup_logging,
    write_result,
)
from copyguard.pipelines.lab.synthetic import (
    pair_codes,
    pair_recall,
    planted_descriptors,
    synthetic_caption,
    synthetic_key,
    synthetic_samples,
)

__all__ = ["main", "peak_rss", "run_distributed", "single_worker"]

log = logging.getLogger(__name__)
MODULE = "copyguard.pipelines.lab.curate_scale"
NAME = "curate_scale"
CHUNK = 20_000
EMBEDDER = {"name": "synthetic-sscd", "dim": 512, "input_size": 320, "preprocessing": {}}
SERIES = ("seconds", "peak_worker_rss_mib", "pair_recall", "controller_rss_mib")


@contextlib.contextmanager
def peak_rss(every: float = 0.5) -> Iterator[dict[str, int]]:
    """Polls this process (``self``) and its children (``child``: the SDK workers) every ``every`` seconds;
    the dict it yields holds the peak RSS of each, in bytes."""
    import psutil  # the [lab] extra; only this measurement needs it

    me, peak, stop = psutil.Process(), {"self": 0, "child": 0}, threading.Event()

    def poll() -> None:
        while not stop.is_set():
            with contextlib.suppress(psutil.Error):
                peak["self"] = max(peak["self"], me.memory_info().rss)
                for child in me.children(recursive=True):
                    with contextlib.suppress(psutil.Error):  # exited between listing and reading
                        peak["child"] = max(peak["child"], child.memory_info().rss)
            stop.wait(every)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()


def run_distributed(path: str, n: int, planted: np.ndarray, workers: int) -> dict[str, Any]:
    """The job's global stages through Beam's local runner, ``workers`` SDK worker processes."""
    import apache_beam as beam

    from copyguard.pipelines.curate import make_pipeline
    from copyguard.pipelines.curate_graph import curate_lights

    with tempfile.TemporaryDirectory(prefix="curate-scale-") as out:
        Path(out, "index").mkdir()
        p = make_pipeline(["--direct_running_mode", "multi_processing", "--direct_num_workers", str(workers)])
        chunks = [(s, min(n, s + CHUNK)) for s in range(0, n, CHUNK)]
        lights = p | "Chunks" >> beam.Create(chunks) | "Read" >> beam.FlatMap(synthetic_samples, path)
        stages = curate_lights(p, lights, out, CurateConfig(), EMBEDDER)
        edge_text = stages["image_edges"] | "EdgeText" >> beam.Map(lambda e: f"{e[0]} {e[1]}")
        _ = edge_text | "WriteEdges" >> beam.io.WriteToText(str(Path(out, "edges")))
        status = stages["rows"] | "Status" >> beam.Map(lambda r: r["status"])
        counts = (
            status | "CountStatus" >> beam.combiners.Count.PerElement() | "StatusText" >> beam.Map(json.dumps)
        )
        _ = counts | "WriteStatus" >> beam.io.WriteToText(str(Path(out, "status")))
        started = time.perf_counter()
        with peak_rss() as rss:
            p.run().wait_until_finish()
        seconds = time.perf_counter() - started
        pairs = [line.split() for f in Path(out).glob("edges*") for line in f.read_text().splitlines()]
        edges = np.unique(pair_codes([int(a[1:]) for a, _ in pairs], [int(b[1:]) for _, b in pairs], n))
        status = dict(
            json.loads(line) for f in Path(out).glob("status*") for line in f.read_text().splitlines()
        )
        info = json.loads(Path(out, "index", "index.json").read_text())
    return {"seconds": round(seconds, 1), "peak_worker_rss_mib": round(rss["child"] / 2**20, 1),
            "controller_rss_mib": round(rss["self"] / 2**20, 1), "pair_recall": round(pair_recall(edges, planted), 5),
            "edges": len(edges), "status": status, "partitions": info["faiss"]["partitions"],
            "index_entries": info["count"]}  # fmt: skip


def single_worker(path: str, pairs_path: str) -> dict[str, Any]:
    """Today's path in this process: every descriptor at once, the global search, policy and index."""
    import resource

    from copyguard.curation.clustering import cluster_components, similarity_edges
    from copyguard.curation.index import IndexEntry, TrainingIndex
    from copyguard.curation.policy import decide
    from copyguard.curation.union_find import group_ids

    cfg, x, (pi, pj) = CurateConfig(), np.load(path), np.load(pairs_path)
    n = len(x)
    keys = [synthetic_key(k) for k in range(n)]
    started = time.perf_counter()
    i, j, sim = similarity_edges(x, cfg.images.threshold, cfg.images)
    groups = group_ids(keys, cluster_components(n, i, j, sim, cfg.images))
    captions = [synthetic_caption(k) for k in range(n)]
    decisions = decide(keys, [64] * n, [64] * n, groups, keys, cfg.policy, captions=captions)
    kept = [k for k, d in enumerate(decisions) if d.status == "kept"]
    entries = [IndexEntry(keys[k], captions[k]) for k in kept]
    TrainingIndex.build(x[kept], entries, EMBEDDER, kind="auto", exact_max=cfg.images.index_exact_max)
    seconds = time.perf_counter() - started
    edges = np.unique(pair_codes(i, j, n))
    return {"seconds": round(seconds, 1), "pair_recall": round(pair_recall(edges, pair_codes(pi, pj, n)), 5),
            "peak_worker_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "edges": len(edges)}  # fmt: skip


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """The result (unfinished header plus the series per N) of one run of the command line ``args``."""
    sizes = [5_000] if args.quick else [int(float(s)) for s in args.sizes.split(",")]
    report = begin_result(NAME, MODULE, args.argv, args.machine, quick=args.quick)
    report.update(n=[], **{k: [] for k in SERIES}, runs=[])
    base: dict[str, list] = {"n": [], "seconds": [], "peak_worker_rss_mib": [], "pair_recall": []}
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="curate-scale-data-") as tmp:
            x, pi, pj, info = planted_descriptors(n)
            path, pairs_path = str(Path(tmp, "x.npy")), str(Path(tmp, "pairs.npy"))
            np.save(path, x)
            np.save(pairs_path, np.stack([pi, pj]))
            del x
            dist = run_distributed(path, n, pair_codes(pi, pj, n), args.workers)
            log.info("N=%d: %s", n, dist)
            report["n"].append(n)
            for k in SERIES:
                report[k].append(dist[k])
            report["runs"].append({"n": n, "data": info, **dist})
            if n <= args.baseline_max:  # in a subprocess, so that its peak RSS is its own
                cmd = [sys.executable, "-m", MODULE, "--single-worker", path, pairs_path]
                done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                one = json.loads(done.stdout.strip().splitlines()[-1])
                log.info("N=%d: single worker %s", n, one)
                for k in base:
                    base[k].append(n if k == "n" else one[k])
    report["single_worker"] = base
    if args.append:
        _merge_previous(report, result_path(args.out, args.machine, NAME))
    return report


def _merge_previous(report: dict[str, Any], path: Path) -> None:
    """Fold an earlier result file's sizes into ``report`` (this run wins for an N measured twice)."""
    if not path.exists():
        return
    old = json.loads(path.read_text())
    for new, prev in ((report, old), (report["single_worker"], old.get("single_worker", {}))):
        keys = [k for k in SERIES if k in new]
        rows = {n: {k: prev[k][i] for k in keys if k in prev} for i, n in enumerate(prev.get("n", []))}
        rows.update({n: {k: new[k][i] for k in keys} for i, n in enumerate(new["n"])})
        new["n"] = sorted(rows)
        new.update({k: [rows[n].get(k) for n in new["n"]] for k in keys})
    done = {r["n"] for r in report["runs"]}
    runs = [*report["runs"], *(r for r in old.get("runs", []) if r["n"] not in done)]
    report["runs"] = sorted(runs, key=lambda r: r["n"])
    report["command"] = f"{old.get('command', '')} + {report['command']}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--single-worker"]:
        print(json.dumps(single_worker(args[1], args[2])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_result_args(parser)
    parser.add_argument("--sizes", default="1e5,1e6", help="comma-separated N (default 1e5,1e6)")
    parser.add_argument("--baseline-max", type=lambda s: int(float(s)), default=1_000_000,
                        help="single-worker path up to this N")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2, help="SDK worker processes (default 2)")
    parser.add_argument("--append", action="store_true", help="add these sizes to the existing result file")
    parsed = parser.parse_args(argv)
    parsed.argv = argv
    setup_logging(parsed.verbose)
    report = finish_result(measure(parsed))
    path = write_result(report, parsed.out, parsed.machine, NAME)
    series = (report[k] for k in ("n", "seconds", "peak_worker_rss_mib", "pair_recall"))
    for n, s, m, r in zip(*series, strict=True):
        print(f"N={n}: {s} s, worker {m} MiB, planted pair recall {r}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
