"""Tuning lab for image copy matching (``curation/image_match.py``) on built ``sample-data`` folders.

    python -m benchmarks.image_match_lab DATA_DIR [DATA_DIR ...] [--cache /tmp/imlab]

Embeds every valid image of each folder once per preprocessing variant (cached as ``.npy``), then scores
candidate matching methods without running Beam: the similarity graph of all pairs cut by each method's
score, clustered with :func:`copyguard.curation.clustering.cluster_components` exactly as the job does, and
scored with :func:`copyguard.curation.evaluate.pairwise_scores` (images) and per planted kind and size
(pair recall). What it printed for the choice in ``image_match`` is in docs/curation.md.
"""

from __future__ import annotations

import argparse
import json
import tarfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from copyguard.curation.clustering import cluster_components
from copyguard.curation.config import ImagesConfig
from copyguard.curation.embedders import load_embedder
from copyguard.curation.evaluate import pairwise_scores
from copyguard.curation.images import decode_image, trim_uniform_border


def read_folder(folder: Path) -> tuple[list[str], list[bytes], list[dict]]:
    """Keys, image bytes and ground-truth rows of a sample-data folder (key order)."""
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


VARIANTS = {
    "plain": lambda img: img,
    "trim": trim_uniform_border,
}


def embed(blobs: list[bytes], variant: str, cache: Path, name: str, embedder) -> np.ndarray:
    path = cache / f"{name}_{variant}.npy"
    if path.exists():
        return np.load(path)
    start = time.perf_counter()
    fn = VARIANTS[variant]
    arrays = [np.asarray(fn(decode_image(b, min_side=embedder.input_size))) for b in blobs]
    out = np.concatenate([embedder.embed(arrays[i : i + 64]) for i in range(0, len(arrays), 64)])
    np.save(path, out)
    print(f"  embedded {name}/{variant}: {len(blobs)} images in {time.perf_counter() - start:.1f} s")
    return out


def score(sim: np.ndarray, truth: list[dict], cfg: ImagesConfig) -> dict:
    """Cluster by the score matrix ``sim`` and score against ``truth``."""
    n = len(truth)
    iu, ju = np.triu_indices(n, 1)
    s = sim[iu, ju]
    keep = s >= cfg.threshold
    labels = cluster_components(n, iu[keep], ju[keep], s[keep], cfg)
    true = [r["image_group"] for r in truth]
    overall = pairwise_scores(labels.tolist(), true)
    per = defaultdict(lambda: [0, 0])
    groups = defaultdict(list)
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--cache", default="/tmp/imlab")
    args = parser.parse_args()
    embedder = load_embedder("sscd-onnx", threads=2, trim_borders=False)
    cache = Path(args.cache)
    cache.mkdir(exist_ok=True, parents=True)
    for folder in map(Path, args.folders):
        keys, blobs, truth = read_folder(folder)
        for variant in VARIANTS:
            embed(blobs, variant, cache, folder.name, embedder)


if __name__ == "__main__":
    main()
