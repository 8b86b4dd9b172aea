"""Caption MinHash LSH in Beam against plain datasketch on the same captions (Broder, 1997).

    python -m benchmarks.bench_minhash [--quick] [--machine TAG] [--out DIR] [--captions 20000]
                                       [--repeats 2] [--csv PATH]

Captions: real MS-COCO captions (``--csv``: the 10,000-prompt COCO 2014 val CSV when present, plus the
shipped ``pipelines/lab/assets/captions_*.txt``: COCO, LAION, LAION memorized and templated prompts; about
10,600 distinct), to which near-duplicates are planted until there are ``--captions`` of them: 1-3
re-casings, punctuation edits or one-word edits (the ``sample-data`` caption edits) of seeded random real
captions, at least 25% of the total. COCO itself holds natural near-duplicates ("a man riding a wave on
top of a surfboard").

Three implementations run on the same captions with the shipped ``curate.minhash`` config, alternated
``--repeats`` times so that they see the same machine load:

- *datasketch*: plain ``MinHash.bulk`` over the same shingle sets + ``MinHashLSH`` insert and query
  (datasketch's own banding for the threshold), every candidate pair checked with the exact shingle
  Jaccard (``verify_threshold``), union-find;
- *in memory*: ``copyguard.curation.captions.caption_groups`` (the job's functions, one process);
- *Beam*: ``CaptionComponents`` (band keys, GroupByKey, verified bucket stars, large-star/small-star
  connected components) in a pipeline on the default in-process runner, timed from pipeline
  construction to the collected output (``Create`` of the records included).

Reports captions/s of each and the Beam/datasketch ratio, and checks the groups: Beam must equal the
in-memory function exactly; datasketch verifies *every* candidate pair while the job verifies bucket
members against the bucket's leaders only, so their same-group pairs are compared with precision/recall.
Writes ``benchmarks/results/<machine>/minhash.json``. About 3 minutes on two cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Hashable
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks.common import (
    begin,
    finish,
    load_average,
    script_main,
)
from copyguard.common.config import load_config
from copyguard.curation.captions import caption_groups as memory_groups
from copyguard.curation.captions import exact_jaccard, shingles
from copyguard.curation.config import CurateConfig, MinHashConfig
from copyguard.curation.union_find import connected_components, group_members
from copyguard.pipelines.lab.sample_captions import (
    case_variants,
    load_caption_pool,
    punct_variants,
    word_variants,
)

log = logging.getLogger("benchmarks.bench_minhash")
COCO_CSV = Path("/work/shared/data/prompts/coco2014_val_10000.csv")
PLANT_FRACTION = 0.25


def real_captions(csv_path: Path | None) -> tuple[list[str], list[str]]:
    """Distinct real captions (CSV first when it exists, then the shipped pool) and their sources."""
    out: list[str] = []
    sources = []
    if csv_path is not None and csv_path.is_file():
        with open(csv_path, newline="", encoding="utf-8") as handle:
            out += [row["Caption"].strip() for row in csv.DictReader(handle, delimiter=";")]
        sources.append(str(csv_path))
    pool = load_caption_pool()
    for part in (pool.coco, pool.laion, pool.memorized, pool.templates):
        out += list(part)
    sources.append("pipelines/lab/assets/captions_*.txt")
    return list(dict.fromkeys(c for c in out if c)), sources


def make_captions(total: int, csv_path: Path | None, seed: int = 0) -> tuple[list[str], list[str], dict]:
    """``total`` keyed captions: real ones plus planted near-duplicates (see the module docstring)."""
    rng = np.random.default_rng(seed)
    real, sources = real_captions(csv_path)
    rng.shuffle(real)
    base = real[: min(len(real), max(1, int(round(total * (1 - PLANT_FRACTION)))))]
    planted: list[str] = []
    edits = (case_variants, punct_variants, word_variants)
    for index in rng.permutation(len(base)).tolist() * 3:  # until there are enough
        if len(base) + len(planted) >= total:
            break
        edit = edits[int(rng.integers(0, len(edits)))]
        planted += edit(base[index], int(rng.integers(1, 4)), rng)
    captions = (base + planted)[:total]
    order = rng.permutation(len(captions))
    captions = [captions[i] for i in order]
    keys = [f"c{i:07d}" for i in range(len(captions))]
    info = {
        "sources": sources,
        "real": len(base),
        "planted": len(captions) - len(base),
        "total": len(captions),
    }
    return keys, captions, info


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
    edges = []
    for a, (key, mh) in enumerate(zip(keys, hashes, strict=True)):
        for other in lsh.query(mh):
            b = index[other]
            if other > key and _set_jaccard(sets[a], sets[b]) >= cfg.verify_threshold:
                edges.append((other, key))
    return connected_components(keys, edges)


def _set_jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


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


def same_group_pairs(groups: dict[Hashable, Hashable]) -> set[tuple]:
    pairs: set[tuple] = set()
    for members in group_members(groups).values():
        pairs.update(combinations(members, 2))
    return pairs


def compare(reference: dict, other: dict) -> dict[str, Any]:
    """Same-group pairs of ``other`` against ``reference``: precision, recall, identical groups."""
    ref, got = same_group_pairs(reference), same_group_pairs(other)
    both = len(ref & got)
    return {
        "identical": reference == other,
        "pairs_reference": len(ref),
        "pairs_other": len(got),
        "precision": round(both / len(got), 4) if got else 1.0,
        "recall": round(both / len(ref), 4) if ref else 1.0,
    }


def _timed(fn, keys, captions, cfg) -> tuple[dict[str, Any], dict]:
    load = load_average()
    start = time.perf_counter()
    groups = fn(keys, captions, cfg)
    seconds = time.perf_counter() - start
    return {
        "seconds": round(seconds, 2),
        "captions_per_s": round(len(keys) / seconds, 1),
        "load_average_before": load,
    }, groups


IMPLEMENTATIONS = {"datasketch": datasketch_groups, "in_memory": memory_groups, "beam": beam_groups}


def run(
    machine: str,
    total: int,
    repeats: int,
    csv_path: Path | None,
    quick: bool = False,
    argv: list[str] | None = None,
) -> dict[str, Any]:
    report = begin("minhash", "benchmarks.bench_minhash", argv, machine, quick)
    cfg = load_config(CurateConfig, "curate").minhash
    keys, captions, info = make_captions(total, csv_path)
    log.info("%d captions (%d real, %d planted)", info["total"], info["real"], info["planted"])
    timings: dict[str, list[dict]] = {name: [] for name in IMPLEMENTATIONS}
    groups: dict[str, dict] = {}
    for _ in tqdm(range(repeats), desc="repeats", unit="round", disable=repeats < 2):
        for name, fn in IMPLEMENTATIONS.items():
            timing, groups[name] = _timed(fn, keys, captions, cfg)
            timings[name].append(timing)
            log.info("%s: %.0f captions/s", name, timing["captions_per_s"])

    median = {n: statistics.median(t["captions_per_s"] for t in runs) for n, runs in timings.items()}
    beam_vs_plain = [
        b["captions_per_s"] / d["captions_per_s"]
        for b, d in zip(timings["beam"], timings["datasketch"], strict=True)
    ]
    members = group_members(groups["in_memory"])
    largest = max(members.values(), key=len) if members else []
    report.update(
        captions=info,
        config=cfg.model_dump(),
        timings=timings,
        summary={
            "datasketch_captions_per_s": round(median["datasketch"], 1),
            "in_memory_captions_per_s": round(median["in_memory"], 1),
            "beam_captions_per_s": round(median["beam"], 1),
            "beam_vs_datasketch_ratio": round(statistics.median(beam_vs_plain), 3),
            "beam_vs_in_memory_ratio": round(median["beam"] / median["in_memory"], 3),
            "groups_with_duplicates": sum(1 for m in members.values() if len(m) > 1),
            "captions_in_duplicate_groups": sum(len(m) for m in members.values() if len(m) > 1),
            "largest_group": len(largest),
            "beam_equals_in_memory": groups["beam"] == groups["in_memory"],
            "in_memory_vs_datasketch": compare(groups["datasketch"], groups["in_memory"]),
        },
        example_group=[captions[keys.index(k)] for k in largest[:5]],
        exact_jaccard_check=_spot_check(keys, captions, groups["in_memory"], cfg),
    )
    return finish(report)


def _spot_check(keys, captions, groups, cfg: MinHashConfig, limit: int = 2000) -> dict[str, Any]:
    """Exact shingle Jaccard of each grouped caption with its group key (up to ``limit`` members)."""
    where = {k: i for i, k in enumerate(keys)}
    grouped = [(k, g) for k, g in groups.items() if g != k][:limit]
    sims = [exact_jaccard(captions[where[k]], captions[where[g]], cfg) for k, g in grouped]
    if not sims:
        return {"members": 0}
    return {
        "members": len(sims),
        "min": round(float(min(sims)), 3),
        "median": round(float(statistics.median(sims)), 3),
    }


def _add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--captions", type=int, default=20_000, help="captions in total (real + planted)")
    parser.add_argument("--repeats", type=int, default=2, help="alternated timing rounds")
    parser.add_argument("--csv", default=str(COCO_CSV), help="COCO prompts CSV (';'-separated, 'Caption')")


def _summary(report: dict[str, Any]) -> str:
    s = report["summary"]
    return (
        f"datasketch {s['datasketch_captions_per_s']}/s, in memory {s['in_memory_captions_per_s']}/s, "
        f"Beam {s['beam_captions_per_s']}/s (Beam/datasketch {s['beam_vs_datasketch_ratio']}); "
        f"Beam == in memory: {s['beam_equals_in_memory']}"
    )


def main(argv: list[str] | None = None) -> int:
    def measure(args: argparse.Namespace) -> dict[str, Any]:
        total, repeats = (400, 1) if args.quick else (args.captions, args.repeats)
        return run(args.machine, total, repeats, Path(args.csv) if args.csv else None, args.quick, argv)

    return script_main(argv, __doc__, "minhash", _add_args, measure, _summary)


if __name__ == "__main__":
    sys.exit(main())
