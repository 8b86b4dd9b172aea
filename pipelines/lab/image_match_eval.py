"""Tuning harness for image copy matching on built ``sample-data`` folders (:mod:`~copyguard.curation.image_match`).

    python -m copyguard.pipelines.lab.image_match_eval DATA_DIR [DATA_DIR ...] [--cache /tmp/imlab]
        [--threshold 0.75] [--score-norm]

Embeds every valid image of each folder once per preprocessing variant (cached as ``.npy``), then scores the
job's matching without running Beam: every pair's score (:func:`~copyguard.curation.image_match.edge_scores`,
the raw SSCD cosine or, with ``--score-norm``, the background-normalized score of Pizzi et al., CVPR 2022,
sec. 3.4), the similarity graph cut at the threshold, clustered with
:func:`copyguard.curation.clustering.cluster_components` exactly as the job does, and scored with
:func:`copyguard.curation.evaluate.pairwise_scores` (images) and per planted kind and size (pair recall).
Prints one JSON object per folder and variant. What it printed for the choice in ``image_match`` is in
docs/curation.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tarfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from copyguard.curation import image_match
from copyguard.curation.clustering import cluster_components
from copyguard.curation.config import ImagesConfig
from copyguard.curation.evaluate import pairwise_scores
from copyguard.curation.images import decode_image, trim_uniform_border

__all__ = ["VARIANTS", "embed", "evaluate_folder", "main", "match_scores", "read_folder", "score"]

log = logging.getLogger(__name__)
# Preprocessing variants applied to the decoded image before the embedder (which itself trims nothing here).
VARIANTS: dict[str, Callable[[Any], Any]] = {
    "plain": lambda img: img,
    "trim": trim_uniform_border,
}


def read_folder(folder: Path) -> tuple[list[str], list[bytes], list[dict]]:
    """Keys, image bytes and ground-truth rows of a sample-data folder (key order); only the unique images
    and the planted image copies (``image_*`` kinds)."""
    truth = {}
    for line in (folder / "ground_truth.jsonl").read_text().splitlines():
        row = json.loads(line)
        truth[row["key"]] = row
    images: dict[str, bytes] = {}
    for shard in sorted(folder.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".jpg"):
                    images[member.name[:-4]] = tar.extractfile(member).read()
    keys = sorted(k for k in images if k in truth and truth[k]["kind"].startswith(("image_", "unique")))
    return keys, [images[k] for k in keys], [truth[k] for k in keys]


def embed(blobs: list[bytes], variant: str, cache: Path, name: str, embedder: Any) -> np.ndarray:
    """Unit SSCD embeddings of ``blobs`` under ``variant``, cached as ``<cache>/<name>_<variant>.npy``."""
    path = cache / f"{name}_{variant}.npy"
    if path.exists():
        return np.load(path)
    start = time.perf_counter()
    fn = VARIANTS[variant]
    arrays = [np.asarray(fn(decode_image(b, min_side=embedder.input_size))) for b in blobs]
    out = np.concatenate([embedder.embed(arrays[i : i + 64]) for i in range(0, len(arrays), 64)])
    np.save(path, out)
    log.info("embedded %s/%s: %d images in %.1f s", name, variant, len(blobs), time.perf_counter() - start)
    return out


def match_scores(emb: np.ndarray, cfg: ImagesConfig, seed: int = 0) -> np.ndarray:
    """The symmetric ``[n, n]`` matrix of the job's pair scores (:func:`image_match.edge_scores`); under score
    normalization the background is a seeded sample of ``emb`` (:func:`image_match.background_size` rows)."""
    emb = np.asarray(emb, dtype=np.float32)
    cos = emb @ emb.T
    if image_match.stats_width(cfg) == 0:
        return cos
    rng = np.random.default_rng(seed)
    size = min(len(emb), image_match.background_size(cfg))
    background = emb[np.sort(rng.choice(len(emb), size=size, replace=False))]
    stats = image_match.descriptor_stats(emb, background, cfg)
    iu, ju = np.triu_indices(len(emb), 1)
    sim = np.zeros_like(cos)
    sim[iu, ju] = image_match.edge_scores(cos[iu, ju], stats[iu], stats[ju], cfg)
    sim[ju, iu] = sim[iu, ju]
    return sim


def score(sim: np.ndarray, truth: list[dict], cfg: ImagesConfig) -> dict[str, Any]:
    """Cluster by the score matrix ``sim`` and score against ``truth``: pairwise figures overall, pair recall
    per planted family and per ``family@size`` (``per``: [true pairs, pairs found])."""
    n = len(truth)
    iu, ju = np.triu_indices(n, 1)
    s = sim[iu, ju]
    keep = s >= cfg.threshold
    labels = cluster_components(n, iu[keep], ju[keep], s[keep], cfg)
    overall = pairwise_scores(labels.tolist(), [r["image_group"] for r in truth])
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    groups: dict[str, list[int]] = defaultdict(list)
    for k, r in enumerate(truth):
        groups[r["image_group"]].append(k)
    for members in groups.values():
        if len(members) < 2:
            continue
        r = truth[members[0]]
        fam = r["kind"].removeprefix("image_")
        for a in members:
            for b in members:
                if a < b:
                    for key in (fam, f"{fam}@{r.get('size', 0)}"):
                        per[key][0] += 1
                        per[key][1] += int(labels[a] == labels[b])
    return {"overall": overall, "recall": {k: v[1] / v[0] for k, v in per.items()}, "per": dict(per)}


def evaluate_folder(folder: Path, embedder: Any, cache: Path, cfg: ImagesConfig) -> dict[str, dict[str, Any]]:
    """:func:`score` of every preprocessing variant of ``folder``'s images under ``cfg``."""
    _, blobs, truth = read_folder(folder)
    return {
        v: score(match_scores(embed(blobs, v, cache, folder.name, embedder), cfg), truth, cfg)
        for v in VARIANTS
    }


def main(argv: list[str] | None = None) -> int:
    from copyguard.curation.embedders import load_embedder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="built sample-data folders (ground_truth.jsonl, shards)")
    parser.add_argument("--cache", default="/tmp/imlab", help="folder of the cached embeddings")
    parser.add_argument("--threshold", type=float, default=None, help="flag threshold (default: the job's)")
    parser.add_argument(
        "--score-norm", action="store_true", help="SSCD score normalization (curate default: off)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cfg = ImagesConfig(score_norm=args.score_norm)
    if args.threshold is not None:  # the stricter join threshold stays at least the flag threshold
        join = max(cfg.join_threshold, args.threshold)
        cfg = ImagesConfig(score_norm=args.score_norm, threshold=args.threshold, join_threshold=join)
    embedder = load_embedder("sscd-onnx", threads=2, trim_borders=False)
    cache = Path(args.cache)
    cache.mkdir(exist_ok=True, parents=True)
    for folder in map(Path, args.folders):
        for variant, result in evaluate_folder(folder, embedder, cache, cfg).items():
            print(json.dumps({"folder": str(folder), "variant": variant, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
