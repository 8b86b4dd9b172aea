"""Caption MinHash LSH in Beam against plain datasketch on the same captions (Broder, 1997).

    python -m benchmarks.bench_minhash [--quick] [--machine TAG] [--out DIR] [--captions 20000]
                                       [--repeats 2] [--csv PATH]

Method: docs/benchmark-methods.md#bench_minhash. Writes ``benchmarks/results/<machine>/minhash.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import begin, finish, load_average, script_main
from copyguard.common.config import load_config
from copyguard.curation.captions import caption_groups as memory_groups
from copyguard.curation.captions import exact_jaccard, set_jaccard, shingles
from copyguard.curation.config import CurateConfig, MinHashConfig
from copyguard.curation.evaluate import pairwise_scores
from copyguard.curation.union_find import connected_components, group_members
from copyguard.pipelines.lab.synthetic import planted_captions

log = logging.getLogger("benchmarks.bench_minhash")
COCO_CSV = Path("/work/shared/data/prompts/coco2014_val_10000.csv")


def datasketch_groups(keys: list[str], captions: list[str], cfg: MinHashConfig) -> dict[Hashable, Hashable]:
    """Plain datasketch: MinHash.bulk, MinHashLSH insert + query, exact-Jaccard check, union-find."""
    from datasketch import MinHash, MinHashLSH

    sets = [shingles(c, cfg.shingle_n, cfg.shingle_kind) for c in captions]
    hashes = MinHash.bulk(sets, num_perm=cfg.num_perm, seed=cfg.seed)
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
    with lsh.insertion_session() as session:
        for key, mh in zip(keys, hashes, strict=True):
            session.insert(key, mh, check_duplication=False)
    index = {k: i for i, k in enumerate(keys)}
    edges = [
        (other, key)
        for a, (key, mh) in enumerate(zip(keys, hashes, strict=True))
        for other in lsh.query(mh)
        if other > key and set_jaccard(sets[a], sets[index[other]]) >= cfg.verify_threshold
    ]
    return connected_components(keys, edges)


def beam_groups(keys: list[str], captions: list[str], cfg: MinHashConfig) -> dict[Hashable, Hashable]:
    """``CaptionComponents`` in a pipeline on the default in-process runner; output collected to JSON."""
    import apache_beam as beam

    from copyguard.pipelines.curate import make_pipeline
    from copyguard.pipelines.transforms import CaptionComponents, EmbeddedSample

    empty = np.zeros(1, np.float32)
    with tempfile.TemporaryDirectory(prefix="bench-minhash-") as tmp:
        out = Path(tmp) / "pairs.json"
        p = make_pipeline([])
        (
            p
            | "Captions" >> beam.Create(list(zip(keys, captions, strict=True)))
            | "ToEmbeddedSample" >> beam.Map(lambda kc: EmbeddedSample(kc[0], "s", kc[1], 0, 0, empty))
            | "CaptionDedup" >> CaptionComponents(cfg, cfg.max_cc_rounds)
            | "Collect" >> beam.combiners.ToList()
            | "Write" >> beam.Map(lambda pairs: out.write_text(json.dumps(sorted(pairs))))
        )
        p.run().wait_until_finish()
        pairs = dict(json.loads(out.read_text()))
    return {k: pairs.get(k, k) for k in keys}


def compare(reference: dict, other: dict) -> dict[str, Any]:
    """Same-group pairs of ``other`` against ``reference``: precision, recall, identical groups."""
    s = pairwise_scores([other[k] for k in reference], list(reference.values()))
    return {"identical": reference == other, "pairs_reference": s["true_pairs"], "pairs_other": s["pred_pairs"],
            "precision": round(s["precision"], 4), "recall": round(s["recall"], 4)}  # fmt: skip


def _spot_check(keys, captions, groups, cfg: MinHashConfig, limit: int = 2000) -> dict[str, Any]:
    """Exact shingle Jaccard of each grouped caption with its group key (up to ``limit`` members)."""
    where = {k: i for i, k in enumerate(keys)}
    grouped = [(k, g) for k, g in groups.items() if g != k][:limit]
    sims = [exact_jaccard(captions[where[k]], captions[where[g]], cfg) for k, g in grouped]
    if not sims:
        return {"members": 0}
    return {"members": len(sims), "min": round(min(sims), 3), "median": round(statistics.median(sims), 3)}


IMPLEMENTATIONS = {"datasketch": datasketch_groups, "in_memory": memory_groups, "beam": beam_groups}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    report = begin("minhash", "benchmarks.bench_minhash", args.argv, args.machine, args.quick)
    total, repeats = (400, 1) if args.quick else (args.captions, args.repeats)
    cfg = load_config(CurateConfig, "curate").minhash
    keys, captions, info = planted_captions(total, Path(args.csv) if args.csv else None)
    log.info("%d captions (%d real, %d planted)", info["total"], info["real"], info["planted"])
    timings: dict[str, list[dict]] = {name: [] for name in IMPLEMENTATIONS}
    groups: dict[str, dict] = {}
    for _ in range(repeats):  # alternated, so that every implementation sees the same machine load
        for name, fn in IMPLEMENTATIONS.items():
            load, start = load_average(), time.perf_counter()
            groups[name] = fn(keys, captions, cfg)
            s = time.perf_counter() - start
            timings[name].append({"seconds": round(s, 2), "captions_per_s": round(len(keys) / s, 1),
                                  "load_average_before": load})  # fmt: skip
            log.info("%s: %.0f captions/s", name, len(keys) / s)
    per_s = {n: [t["captions_per_s"] for t in runs] for n, runs in timings.items()}
    ratios = [b / d for b, d in zip(per_s["beam"], per_s["datasketch"], strict=True)]
    median = {n: statistics.median(v) for n, v in per_s.items()}
    every = list(group_members(groups["in_memory"]).values())
    largest, members = max(every, key=len, default=[]), [m for m in every if len(m) > 1]
    report.update(
        captions=info,
        config=cfg.model_dump(),
        timings=timings,
        summary={
            "datasketch_captions_per_s": round(median["datasketch"], 1),
            "in_memory_captions_per_s": round(median["in_memory"], 1),
            "beam_captions_per_s": round(median["beam"], 1),
            "beam_vs_datasketch_ratio": round(statistics.median(ratios), 3),
            "beam_vs_in_memory_ratio": round(median["beam"] / median["in_memory"], 3),
            "groups_with_duplicates": len(members),
            "captions_in_duplicate_groups": sum(len(m) for m in members),
            "largest_group": len(largest),
            "beam_equals_in_memory": groups["beam"] == groups["in_memory"],
            "in_memory_vs_datasketch": compare(groups["datasketch"], groups["in_memory"]),
        },
        example_group=[captions[keys.index(k)] for k in largest[:5]],
        exact_jaccard_check=_spot_check(keys, captions, groups["in_memory"], cfg),
    )
    return finish(report)


def _add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--captions", type=int, default=20_000, help="captions in total (real + planted)")
    parser.add_argument("--repeats", type=int, default=2, help="alternated timing rounds")
    parser.add_argument("--csv", default=str(COCO_CSV), help="COCO prompts CSV (';'-separated, 'Caption')")


def _summary(report: dict[str, Any]) -> str:
    s = report["summary"]
    return (f"datasketch {s['datasketch_captions_per_s']}/s, in memory {s['in_memory_captions_per_s']}/s, Beam "
            f"{s['beam_captions_per_s']}/s; Beam == in memory: {s['beam_equals_in_memory']}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return script_main(argv, __doc__, "minhash", _add_args, measure, _summary)


if __name__ == "__main__":
    sys.exit(main())
