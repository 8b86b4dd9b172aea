"""Scale evidence for the distributed curation job: its global stages on synthetic SSCD-like descriptors.

    python -m benchmarks.bench_curate_scale [--sizes 1e5,1e6] [--baseline-max 1e6] [--quick]

Per N: synthetic 512-d unit descriptors clustered around log-normal-popular centres with planted copy pairs
(cosine 0.76-0.98; benchmarks/bench_faiss.py's generator), written once to a ``.npy`` file that a Beam source
reads in chunks (no images, no embedding). The job's global stages (:func:`curate_lights`: unique keys,
coarse k-means, partitioned exact search, caption LSH, connected components, policy per component, the
sharded index) run through Beam's local runner with ``--direct_running_mode multi_processing``. Recorded:
wall seconds, the peak RSS of the largest SDK worker process (the processes that run our DoFns; the
runner's controller, which buffers every shuffle in memory by design, is reported apart as
``controller_rss_mib``), and planted pair recall (the planted pairs are above the threshold by
construction, so exact search finds all of them). The same is measured for today's single-worker path
(every descriptor in one process: :func:`similarity_edges` + :func:`cluster_components` + the policy + the
index) in a subprocess, where N fits. Writes ``results/<machine>/curate_scale.json`` with lists ``n``,
``seconds``, ``peak_worker_rss_mib``, ``pair_recall`` (and the same under ``single_worker``).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_faiss import synthetic
from benchmarks.common import begin, result_path, script_main

log = logging.getLogger("benchmarks.bench_curate_scale")
NAME = "curate_scale"
CHUNK = 20_000
EMBEDDER = {"name": "synthetic-sscd", "dim": 512, "input_size": 320, "preprocessing": {}}
_SYLLABLES = (
    "ba",
    "ko",
    "mi",
    "ru",
    "te",
    "lo",
    "san",
    "vel",
    "dor",
    "pi",
    "zu",
    "ne",
    "fa",
    "gri",
    "hol",
    "ya",
)


def _word(code: int) -> str:
    return "".join(_SYLLABLES[(code >> (4 * k)) & 15] for k in range(3))


def _caption(i: int) -> str:
    """Six pseudo-words drawn from 4,096 by a hash of ``i``: distinct captions share almost no word pair."""
    h = (i * 0x9E3779B97F4A7C15) & ((1 << 64) - 1)
    return " ".join(_word((h >> (12 * k)) & 0xFFF) for k in range(6))


def _key(i: int) -> str:
    return f"s{i:09d}"


def _read_chunk(bounds: tuple[int, int], path: str):
    from copyguard.pipelines.transforms import EmbeddedSample

    x = np.load(path, mmap_mode="r")
    start, stop = bounds
    block = np.array(x[start:stop])
    for i in range(start, stop):
        yield EmbeddedSample(_key(i), "synthetic.tar", _caption(i), 64, 64, block[i - start])


class _PeakRss:
    """Polls this process and its children (the SDK workers) every ``every`` seconds for their RSS."""

    def __init__(self, every: float = 0.5) -> None:
        import psutil

        self.me = psutil.Process()
        self.every = every
        self.peak_self = 0
        self.peak_child = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_self = max(self.peak_self, self.me.memory_info().rss)
                for child in self.me.children(recursive=True):
                    try:
                        self.peak_child = max(self.peak_child, child.memory_info().rss)
                    except Exception:  # exited between listing and reading
                        continue
            except Exception:
                pass
            self._stop.wait(self.every)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def _recall(edges: set[tuple[int, int]], pi: np.ndarray, pj: np.ndarray) -> float:
    return (
        float(np.mean([(int(a), int(b)) in edges for a, b in zip(pi, pj, strict=True)])) if len(pi) else 1.0
    )


def run_distributed(path: str, n: int, pi: np.ndarray, pj: np.ndarray, workers: int) -> dict[str, Any]:
    """The job's global stages through Beam's local runner, ``workers`` SDK worker processes."""
    import apache_beam as beam

    from copyguard.curation.config import CurateConfig
    from copyguard.pipelines.curate import make_pipeline
    from copyguard.pipelines.curate_graph import curate_lights

    cfg = CurateConfig()
    with tempfile.TemporaryDirectory(prefix="curate-scale-") as out:
        Path(out, "index").mkdir()
        args = ["--direct_running_mode", "multi_processing", "--direct_num_workers", str(workers)]
        p = make_pipeline(args)
        chunks = [(s, min(n, s + CHUNK)) for s in range(0, n, CHUNK)]
        lights = p | "Chunks" >> beam.Create(chunks) | "Read" >> beam.FlatMap(_read_chunk, path)
        stages = curate_lights(p, lights, out, cfg, EMBEDDER)
        _ = (
            stages["image_edges"]
            | "EdgeText" >> beam.Map(lambda e: f"{e[0]} {e[1]}")
            | "WriteEdges" >> beam.io.WriteToText(str(Path(out, "edges")))
        )
        _ = (
            stages["rows"]
            | "Status" >> beam.Map(lambda r: r["status"])
            | "CountStatus" >> beam.combiners.Count.PerElement()
            | "StatusText" >> beam.Map(json.dumps)
            | "WriteStatus" >> beam.io.WriteToText(str(Path(out, "status")))
        )
        started = time.perf_counter()
        with _PeakRss() as rss:
            p.run().wait_until_finish()
        seconds = time.perf_counter() - started
        edges = set()
        for f in Path(out).glob("edges*"):
            for line in f.read_text().splitlines():
                a, b = line.split()
                edges.add((int(a[1:]), int(b[1:])))
        status = dict(
            json.loads(line) for f in Path(out).glob("status*") for line in f.read_text().splitlines()
        )
        info = json.loads(Path(out, "index", "index.json").read_text())
    return {
        "seconds": round(seconds, 1),
        "peak_worker_rss_mib": round(rss.peak_child / 2**20, 1),
        "controller_rss_mib": round(rss.peak_self / 2**20, 1),
        "pair_recall": round(_recall(edges, pi, pj), 5),
        "edges": len(edges),
        "status": status,
        "partitions": info["faiss"]["partitions"],
        "index_entries": info["count"],
    }


def single_worker(path: str, pairs_path: str) -> dict[str, Any]:
    """Today's path in this process: every descriptor at once, the global search, policy and index."""
    import resource

    from copyguard.curation.clustering import cluster_components, similarity_edges
    from copyguard.curation.config import CurateConfig
    from copyguard.curation.index import IndexEntry, TrainingIndex
    from copyguard.curation.policy import decide
    from copyguard.curation.union_find import group_ids

    cfg = CurateConfig()
    x = np.load(path)
    pairs = np.load(pairs_path)
    n = len(x)
    keys = [_key(i) for i in range(n)]
    started = time.perf_counter()
    i, j, sim = similarity_edges(x, cfg.images.threshold, cfg.images)
    labels = cluster_components(n, i, j, sim, cfg.images)
    groups = group_ids(keys, labels)
    captions = [_caption(k) for k in range(n)]
    decisions = decide(keys, [64] * n, [64] * n, groups, keys, cfg.policy, captions=captions)
    kept = [k for k, d in enumerate(decisions) if d.status == "kept"]
    entries = [IndexEntry(keys[k], captions[k]) for k in kept]
    TrainingIndex.build(x[kept], entries, EMBEDDER, kind="auto", exact_max=cfg.images.index_exact_max)
    seconds = time.perf_counter() - started
    edges = set(zip(i.tolist(), j.tolist(), strict=True))
    return {
        "seconds": round(seconds, 1),
        "peak_worker_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "pair_recall": round(_recall(edges, pairs[0], pairs[1]), 5),
        "edges": len(edges),
    }


def _size(text: str) -> int:
    return int(float(text))


def _add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="1e5,1e6", help="comma-separated N (default 1e5,1e6)")
    parser.add_argument(
        "--baseline-max", type=_size, default=1_000_000, help="single-worker path up to this N"
    )
    parser.add_argument("--workers", type=int, default=2, help="SDK worker processes (default 2)")
    parser.add_argument(
        "--append",
        action="store_true",
        help="add these sizes to the existing result file (replacing equal N)",
    )
    parser.add_argument("--single-worker", nargs=2, metavar=("X_NPY", "PAIRS_NPY"), help=argparse.SUPPRESS)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [5_000] if args.quick else [_size(s) for s in args.sizes.split(",")]
    report = begin(NAME, "benchmarks.bench_curate_scale", None, args.machine, quick=args.quick)
    report.update(n=[], seconds=[], peak_worker_rss_mib=[], pair_recall=[], controller_rss_mib=[], runs=[])
    base: dict[str, list] = {"n": [], "seconds": [], "peak_worker_rss_mib": [], "pair_recall": []}
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="curate-scale-data-") as tmp:
            x, pi, pj, info = synthetic(n)
            path, pairs_path = str(Path(tmp, "x.npy")), str(Path(tmp, "pairs.npy"))
            np.save(path, x)
            np.save(pairs_path, np.stack([pi, pj]))
            del x
            log.info("N=%d: distributed run", n)
            dist = run_distributed(path, n, pi, pj, args.workers)
            log.info("N=%d: %s", n, dist)
            for k in ("seconds", "peak_worker_rss_mib", "pair_recall", "controller_rss_mib"):
                report[k].append(dist[k])
            report["n"].append(n)
            report["runs"].append({"n": n, "data": info, **dist})
            if n <= args.baseline_max:
                cmd = [
                    sys.executable,
                    "-m",
                    "benchmarks.bench_curate_scale",
                    "--single-worker",
                    path,
                    pairs_path,
                ]
                done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                one = json.loads(done.stdout.strip().splitlines()[-1])
                log.info("N=%d: single worker %s", n, one)
                base["n"].append(n)
                for k in ("seconds", "peak_worker_rss_mib", "pair_recall"):
                    base[k].append(one[k])
    report["single_worker"] = base
    if args.append:
        _merge_previous(report, result_path(args.out, args.machine, NAME))
    return report


def _merge_previous(report: dict[str, Any], path: Path) -> None:
    """Fold an earlier result file's sizes into ``report`` (this run wins for an N measured twice)."""
    if not path.exists():
        return
    old = json.loads(path.read_text())
    for target, source in ((report, old), (report["single_worker"], old.get("single_worker", {}))):
        keys = [
            k for k in ("seconds", "peak_worker_rss_mib", "pair_recall", "controller_rss_mib") if k in target
        ]
        rows = {n: {k: source[k][i] for k in keys if k in source} for i, n in enumerate(source.get("n", []))}
        rows.update({n: {k: target[k][i] for k in keys} for i, n in enumerate(target["n"])})
        target["n"] = sorted(rows)
        for k in keys:
            target[k] = [rows[n].get(k) for n in target["n"]]
    done = {r["n"] for r in report["runs"]}
    report["runs"] = sorted(
        [*report["runs"], *(r for r in old.get("runs", []) if r["n"] not in done)], key=lambda r: r["n"]
    )
    report["command"] = f"{old.get('command', '')} + {report['command']}"


def _summary(report: dict[str, Any]) -> str:
    return "; ".join(
        f"N={n}: {s} s, worker {m} MiB, recall {r}"
        for n, s, m, r in zip(
            report["n"], report["seconds"], report["peak_worker_rss_mib"], report["pair_recall"], strict=True
        )
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--single-worker"]:
        print(json.dumps(single_worker(args[1], args[2])))
        return 0
    return script_main(argv, __doc__ or "", NAME, _add_args, measure, _summary)


if __name__ == "__main__":
    sys.exit(main())
