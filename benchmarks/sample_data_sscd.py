"""Choose and check the ``sample-data`` image pool with the real SSCD model (algorithms.md §9).

    python -m benchmarks.sample_data_sscd select [--tile 32] [--distinct 0.5] [--robust 0.7]
    python -m benchmarks.sample_data_sscd validate [--preset small] [--machine dev-2cpu]

``select`` (a one-off: ~30,000 embeddings, 20-40 min on two cores; ``--cache`` keeps them, per edit name)
cuts every photo of :mod:`copyguard.curation.sample_images` into disjoint grid tiles, embeds each tile and
its strongest planted edits (:func:`~copyguard.curation.sample_images.variant_extremes`), keeps a large set
of tiles no two of which look alike (cosine < ``--distinct``; greedy minimum-degree independent set, ties
broken towards robust tiles), marks as ``editable`` those whose edits all stay copies (cosine >=
``--robust``) and none of whose edits looks like another kept tile, and writes
``curation/data/image_pool.json``. The builder reads only that file at run time.

``validate`` builds a preset into a temporary folder and measures what the curation job will see: per
planted image kind, the cosine of each member with its group original; for every image, the largest cosine
with an image of another image group; and for captions, the largest normalized shingle Jaccard between
different caption groups. Writes ``benchmarks/results/<machine>/sample_data.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from copyguard.curation.embedders import embedder_info, load_embedder
from copyguard.curation.fileops import atomic_write
from copyguard.curation.sample_images import (
    PHOTO_NAMES,
    Tile,
    encode_jpeg,
    grid_tiles,
    render_tile,
    variant_extremes,
)

log = logging.getLogger("benchmarks.sample_data_sscd")
ROOT = Path(__file__).resolve().parent.parent
POOL_PATH = ROOT / "curation" / "data" / "image_pool.json"
RESULTS = Path(__file__).resolve().parent / "results"
# Photos to shrink by an integer factor before tiling (none: every photo is tiled at its own resolution).
DOWNSCALE: dict[str, int] = {}


def _candidates(tile: int) -> list[Tile]:
    out: list[Tile] = []
    for name in PHOTO_NAMES:
        out.extend(grid_tiles(name, tile, DOWNSCALE.get(name, 1)))
    return out


def _embed(embedder: Any, blobs: list[bytes], what: str) -> np.ndarray:
    start = time.time()
    out = np.concatenate([embedder.embed_bytes(blobs[i : i + 256]) for i in range(0, len(blobs), 256)])
    log.info("embedded %d %s in %.0f s", len(blobs), what, time.time() - start)
    return out.astype(np.float32)


def _min_degree_independent_set(adjacent: np.ndarray, prefer: np.ndarray | None = None) -> np.ndarray:
    """Greedy maximum independent set: repeatedly take the vertex with the fewest live neighbours
    (among equals, a preferred one first, then the lowest index)."""
    n = adjacent.shape[0]
    alive = np.ones(n, bool)
    chosen = np.zeros(n, bool)
    degree = adjacent.sum(1).astype(np.int64)
    bonus = np.zeros(n) if prefer is None else 0.5 * prefer.astype(np.float64)
    while alive.any():
        live = np.flatnonzero(alive)
        i = int(live[np.argmin(degree[live] - bonus[live])])
        drop = adjacent[i] & alive
        drop[i] = True
        chosen[i] = True
        alive &= ~drop
        degree -= adjacent[:, drop].sum(1)
    return chosen


def _edit_embeddings(
    embedder: Any, tiles: list[Tile], blobs: list[bytes], quality: int, cache: Path | None
) -> dict[str, np.ndarray]:
    """Per edit name, the embeddings of that edit of every tile (cached by name: a changed edit changes
    its name, so only new edits are embedded again)."""
    stored: dict[str, np.ndarray] = {}
    if cache is not None and cache.is_file():
        with np.load(cache) as data:
            stored = {k: data[k] for k in data.files if data[k].shape[0] == len(tiles)}
    variants = [variant_extremes(b, quality) for b in blobs]
    out = {}
    for name in variants[0]:
        if name not in stored:
            stored[name] = _embed(embedder, [v[name] for v in variants], f"edits {name}")
            if cache is not None:
                np.savez(cache, **stored)
        out[name] = stored[name]
    return out


def select(args: argparse.Namespace) -> dict[str, Any]:
    tiles = _candidates(args.tile)
    log.info("%d candidate tiles of %d px", len(tiles), args.tile)
    cache = Path(args.cache) if args.cache else None
    embedder = load_embedder("sscd-onnx")
    blobs = [encode_jpeg(render_tile(t, args.size), args.quality) for t in tiles]
    stored = {}
    if cache is not None and cache.is_file():
        with np.load(cache) as data:
            stored = {k: data[k] for k in data.files}
    if "base" in stored and stored["base"].shape[0] == len(tiles):
        base = stored["base"]
    else:
        base = _embed(embedder, blobs, "tiles")
        if cache is not None:
            np.savez(cache, **{**stored, "base": base})
    edits = _edit_embeddings(embedder, tiles, blobs, args.quality, cache)
    names = list(edits)
    stacked = np.stack([edits[n] for n in names], axis=1)  # [tiles, edits, dim]
    to_own = np.einsum("nd,nkd->nk", base, stacked)
    robust = to_own.min(1) >= args.robust
    log.info("%d of %d tiles keep every edit at cosine >= %.2f", robust.sum(), len(tiles), args.robust)
    # 1. Pool: no two tiles alike (cosine < distinct); ties broken towards robust tiles.
    sim = base @ base.T
    np.fill_diagonal(sim, -1.0)
    adjacent = sim >= args.distinct
    chosen = _min_degree_independent_set(adjacent, prefer=robust)
    idx = np.flatnonzero(chosen)
    # 2. Editable: robust, and none of its edits is alike another pool tile.
    edit_vs_pool = np.einsum("nkd,md->nkm", stacked[idx], base[idx]).max(1)
    np.fill_diagonal(edit_vs_pool, -1.0)
    editable = robust[idx] & (edit_vs_pool.max(1) < args.distinct)
    kept = sorted(
        Tile(t.photo, t.y, t.x, t.size, t.downscale, bool(e))
        for t, e in zip((tiles[i] for i in idx), editable, strict=True)
    )
    per_photo: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for t in kept:
        per_photo[t.photo][0] += 1
        per_photo[t.photo][1] += int(t.editable)
    log.info("kept %d tiles, %d editable: %s", len(kept), int(editable.sum()), dict(per_photo))
    pool = {
        "about": "Photo tiles for `copyguard sample-data`, chosen by `python -m benchmarks.sample_data_sscd "
        "select`: [photo, y, x, size, downscale, editable]. No two tiles are SSCD copies of each other; "
        "every planted edit of an editable tile stays a copy of it and is no copy of another tile.",
        "model": embedder_info(embedder),
        "image_size": args.size,
        "jpeg_quality": args.quality,
        "tile": args.tile,
        "downscale": DOWNSCALE,
        "edits_checked": names,
        "robust_min_cosine": args.robust,
        "distinct_max_cosine": args.distinct,
        "candidates": len(tiles),
        "robust": int(robust.sum()),
        "editable": int(editable.sum()),
        "per_photo_tiles_editable": dict(sorted(per_photo.items())),
        "tiles": [t.to_json() for t in kept],
    }
    text = json.dumps(pool, indent=None, sort_keys=True)
    text = text.replace('"tiles": [[', '"tiles": [\n[').replace("], [", "],\n[")
    atomic_write(str(POOL_PATH), (text + "\n").encode("utf-8"))
    log.info("wrote %s", POOL_PATH)
    to_own_stats = {n: _stats(to_own[robust[:] & chosen, k]) for k, n in enumerate(names)}
    return {**{k: v for k, v in pool.items() if k != "tiles"}, "editable_edit_to_own": to_own_stats}


def _stats(values: np.ndarray) -> dict[str, Any]:
    if len(values) == 0:
        return {"n": 0}
    p = np.percentile(values, [1, 5, 50, 95, 99])
    return {
        "n": int(len(values)),
        "min": round(float(values.min()), 3),
        "p1": round(float(p[0]), 3),
        "p5": round(float(p[1]), 3),
        "median": round(float(p[2]), 3),
        "p95": round(float(p[3]), 3),
        "p99": round(float(p[4]), 3),
        "max": round(float(values.max()), 3),
    }


def _image_report(keys: list[str], truth: dict[str, dict], emb: np.ndarray) -> dict[str, Any]:
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
        "to_group_original": {k: _stats(np.array(v)) for k, v in sorted(to_original.items())},
        "nearest_other_group": _stats(nearest),
        "nearest_other_group_by_kind": {k: _stats(nearest[kinds == k]) for k in sorted(set(kinds.tolist()))},
        "images_with_other_group_above": {str(t): int((nearest > t).sum()) for t in (0.5, 0.55, 0.6, 0.7)},
        "pairs_across_groups_above": {str(t): int((cross > t).sum()) for t in (0.5, 0.55, 0.6, 0.7)},
        "top_pairs_across_groups": [
            [round(float(cross[t]), 3), keys[iu[0][t]], kinds[iu[0][t]], keys[iu[1][t]], kinds[iu[1][t]]]
            for t in top
        ],
    }


def _caption_report(keys: list[str], truth: dict[str, dict], captions: list[str]) -> dict[str, Any]:
    from copyguard.curation.sample_captions import jaccard, near_duplicate_pairs

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
            "to_group_original": {k: _stats(np.array(v)) for k, v in sorted(to_original.items())},
            "max_across_groups": round(across[0][0], 3) if across else "< 0.3",
            "pairs_across_groups_above": {
                str(t): sum(1 for j, _, _ in across if j >= t) for t in (0.4, 0.5, 0.7)
            },
            "top_pairs_across_groups": [[round(j, 3), captions[a], captions[b]] for j, a, b in across[:5]],
        }
    return out


def validate(args: argparse.Namespace) -> dict[str, Any]:
    from copyguard.curation.config import load_config
    from copyguard.curation.records import Sample
    from copyguard.curation.sample_data import SampleDataConfig, build_sample_data
    from copyguard.curation.shards import iter_samples

    timings = {}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in ("tiny", args.preset):
            cfg = load_config(
                SampleDataConfig,
                "sample_data",
                None,
                [f"sample_data.preset={preset}", f"sample_data.seed={args.seed}"],
            )
            start = time.perf_counter()
            summary = build_sample_data(cfg, Path(tmp) / preset)
            timings[preset] = round(time.perf_counter() - start, 2)
        folder = Path(tmp) / args.preset
        truth = {}
        for line in (folder / "ground_truth.jsonl").read_text("utf-8").splitlines():
            row = json.loads(line)
            truth[row["key"]] = row
        samples = [r for r in iter_samples(str(folder / "shard-*.tar")) if isinstance(r, Sample)]
    keys = [s.key for s in samples]
    embedder = load_embedder("sscd-onnx")
    emb = _embed(embedder, [s.image for s in samples], "sample images")
    report = {
        "preset": args.preset,
        "seed": args.seed,
        "summary": summary,
        "build_seconds": timings,
        "model": embedder_info(embedder),
        "images": _image_report(keys, truth, emb),
        "captions": _caption_report(keys, truth, [s.caption for s in samples]),
    }
    out = RESULTS / args.machine / "sample_data.json"
    atomic_write(str(out), (json.dumps(report, indent=2) + "\n").encode("utf-8"))
    log.info("wrote %s", out)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sel = sub.add_parser("select", help="choose the image pool and write curation/data/image_pool.json")
    sel.add_argument("--tile", type=int, default=32)
    sel.add_argument("--size", type=int, default=64)
    sel.add_argument("--quality", type=int, default=90)
    sel.add_argument("--distinct", type=float, default=0.5)
    sel.add_argument("--robust", type=float, default=0.7)
    sel.add_argument("--cache", default=None, help="npz file caching the embeddings between runs")
    val = sub.add_parser("validate", help="measure a built preset with SSCD")
    val.add_argument("--preset", default="small")
    val.add_argument("--seed", type=int, default=0)
    val.add_argument("--machine", default="dev-2cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    result = select(args) if args.command == "select" else validate(args)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
