"""What a built ``sample-data`` preset looks like to the real SSCD model (SSCD: Pizzi et al., CVPR 2022).

    python -m copyguard.pipelines.lab.sample_check [--preset small] [--seed 0] [--machine dev-2cpu] [--quick]

Builds the preset into a temporary folder and measures what the curation job will see: per planted image
kind, the cosine of each member with its group original; for every image, the largest cosine with an image
of another image group; and for captions, the largest normalized shingle Jaccard between different caption
groups. ``--quick`` measures the ``tiny`` preset. Writes ``benchmarks/results/<machine>/sample_data.json``
and prints it. The image pool itself is chosen by ``python -m copyguard.pipelines.lab.image_pool select``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from copyguard.curation.embedders import embedder_info, load_embedder
from copyguard.pipelines.lab.image_pool import embed, stats
from copyguard.pipelines.lab.results import add_result_args, begin_result, setup_logging, write_result

__all__ = ["caption_report", "check_sample_data", "image_report", "main"]

MODULE = "copyguard.pipelines.lab.sample_check"


def image_report(keys: list[str], truth: dict[str, dict], emb: np.ndarray) -> dict[str, Any]:
    """SSCD figures of the images ``keys`` (unit embeddings ``emb``, rows match; ``truth``: ground-truth rows
    by key): each planted member's cosine to its group original per kind, each image's largest cosine to
    another image group, counts over thresholds and the ten closest pairs across groups."""
    index = {k: i for i, k in enumerate(keys)}
    groups = np.array([truth[k]["image_group"] for k in keys])
    kinds = np.array([truth[k]["kind"] for k in keys])
    to_original: dict[str, list[float]] = defaultdict(list)
    for i, key in enumerate(keys):
        group = groups[i]
        if group != key and group in index:
            to_original[kinds[i]].append(float(emb[i] @ emb[index[group]]))
    sim = emb @ emb.T
    sim[groups[:, None] == groups[None, :]] = -1.0
    nearest = sim.max(1)
    iu = np.triu_indices(len(keys), 1)
    cross = sim[iu]
    top = np.argsort(-cross)[:10]
    return {
        "to_group_original": {k: stats(np.array(v)) for k, v in sorted(to_original.items())},
        "nearest_other_group": stats(nearest),
        "nearest_other_group_by_kind": {k: stats(nearest[kinds == k]) for k in sorted(set(kinds.tolist()))},
        "images_with_other_group_above": {str(t): int((nearest > t).sum()) for t in (0.5, 0.55, 0.6, 0.7)},
        "pairs_across_groups_above": {str(t): int((cross > t).sum()) for t in (0.5, 0.55, 0.6, 0.7)},
        "top_pairs_across_groups": [
            [round(float(cross[t]), 3), keys[iu[0][t]], kinds[iu[0][t]], keys[iu[1][t]], kinds[iu[1][t]]]
            for t in top
        ],
    }


def caption_report(keys: list[str], truth: dict[str, dict], captions: list[str]) -> dict[str, Any]:
    """Normalized shingle Jaccard (character 5-grams and word 2-grams) of each planted caption to its group
    original per kind, and of the closest captions of different caption groups."""
    from copyguard.pipelines.lab.sample_captions import jaccard, near_duplicate_pairs

    index = {k: i for i, k in enumerate(keys)}
    groups = [truth[k]["caption_group"] for k in keys]
    kinds = [truth[k]["kind"] for k in keys]
    out: dict[str, Any] = {}
    for kind, n in (("char", 5), ("word", 2)):
        name = f"{kind}{n}"
        to_original: dict[str, list[float]] = defaultdict(list)
        for i, key in enumerate(keys):
            if groups[i] != key and groups[i] in index:
                to_original[kinds[i]].append(jaccard(captions[i], captions[index[groups[i]]], kind, n))
        across = [
            (jaccard(captions[a], captions[b], kind, n), a, b)
            for a, b in near_duplicate_pairs(captions, kind, n, 0.3)
            if groups[a] != groups[b]
        ]
        across.sort(reverse=True)
        out[name] = {
            "to_group_original": {k: stats(np.array(v)) for k, v in sorted(to_original.items())},
            "max_across_groups": round(across[0][0], 3) if across else "< 0.3",
            "pairs_across_groups_above": {
                str(t): sum(1 for j, _, _ in across if j >= t) for t in (0.4, 0.5, 0.7)
            },
            "top_pairs_across_groups": [[round(j, 3), captions[a], captions[b]] for j, a, b in across[:5]],
        }
    return out


def check_sample_data(
    preset: str, seed: int, machine: str, argv: list[str] | None = None, quick: bool = False
) -> dict[str, Any]:
    """Build ``preset`` (after ``tiny``, for its timing) into a temporary folder and measure it; the result
    body (with the :func:`~copyguard.pipelines.lab.results.begin_result` header)."""
    from copyguard.common.config import load_config
    from copyguard.curation.records import Sample
    from copyguard.curation.shards import iter_samples
    from copyguard.pipelines.lab.config import SampleDataConfig
    from copyguard.pipelines.lab.sample_data import build_sample_data

    report = begin_result("sample_data", MODULE, argv, machine, quick)
    timings = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in dict.fromkeys(("tiny", preset)):
            sets = [f"sample_data.preset={name}", f"sample_data.seed={seed}"]
            cfg = load_config(SampleDataConfig, "sample_data", None, sets)
            start = time.perf_counter()
            summary = build_sample_data(cfg, Path(tmp) / name)
            timings[name] = round(time.perf_counter() - start, 2)
        folder = Path(tmp) / preset
        truth = {}
        for line in (folder / "ground_truth.jsonl").read_text("utf-8").splitlines():
            row = json.loads(line)
            truth[row["key"]] = row
        samples = [r for r in iter_samples(str(folder / "shard-*.tar")) if isinstance(r, Sample)]
    keys = [s.key for s in samples]
    embedder = load_embedder("sscd-onnx")
    emb = embed(embedder, [s.image for s in samples], "sample images")
    report |= {
        "preset": preset,
        "seed": seed,
        "summary": summary,
        "build_seconds": timings,
        "model": embedder_info(embedder),
        "images": image_report(keys, truth, emb),
        "captions": caption_report(keys, truth, [s.caption for s in samples]),
    }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_result_args(parser)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    preset = "tiny" if args.quick else args.preset  # the smoke version measures the tiny preset only
    report = check_sample_data(preset, args.seed, args.machine, argv, args.quick)
    write_result(report, args.out, args.machine, "sample_data")
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
