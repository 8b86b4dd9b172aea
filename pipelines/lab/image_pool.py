"""The lab's image pool: which photo tiles ``copyguard sample-data`` may use, chosen with the real SSCD model.

    python -m copyguard.pipelines.lab.image_pool select [--tile 32] [--distinct 0.5] [--robust 0.7] [--cache F]

A one-off (~30,000 embeddings, 20-40 min on two cores; ``--cache`` keeps them, per edit name): cut every
photo of :mod:`copyguard.pipelines.lab.sample_images` into disjoint grid tiles, embed each tile and its
strongest planted edits (:func:`~copyguard.pipelines.lab.sample_images.variant_extremes`) with SSCD
(Pizzi et al., CVPR 2022), keep a large set of tiles no two of which look alike (cosine < ``--distinct``;
greedy minimum-degree independent set, ties broken towards robust tiles), mark as ``editable`` those whose
edits all stay copies (cosine >= ``--robust``) and none of whose edits looks like another kept tile, and
write ``pipelines/lab/assets/image_pool.json``. The sample-data builder reads only that file at run time;
``python -m copyguard.pipelines.lab.sample_check`` measures what a built preset looks like to SSCD.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from copyguard.common.fileops import atomic_write
from copyguard.curation.embedders import embedder_info, load_embedder
from copyguard.pipelines.lab.sample_images import (
    PHOTO_NAMES,
    Tile,
    encode_jpeg,
    grid_tiles,
    render_tile,
    variant_extremes,
)

__all__ = ["POOL_PATH", "candidates", "embed", "main", "min_degree_independent_set", "select", "stats"]

log = logging.getLogger("copyguard.pipelines.lab.image_pool")
POOL_PATH = Path(__file__).resolve().parent / "assets" / "image_pool.json"
# Photos to shrink by an integer factor before tiling (none: every photo is tiled at its own resolution).
DOWNSCALE: dict[str, int] = {}


def candidates(tile: int) -> list[Tile]:
    """Every disjoint ``tile`` px grid tile of every shipped photo."""
    out: list[Tile] = []
    for name in PHOTO_NAMES:
        out.extend(grid_tiles(name, tile, DOWNSCALE.get(name, 1)))
    return out


def embed(embedder: Any, blobs: list[bytes], what: str) -> np.ndarray:
    """SSCD embeddings of encoded images, 256 at a time (float32, one row per image)."""
    start = time.time()
    out = np.concatenate([embedder.embed_bytes(blobs[i : i + 256]) for i in range(0, len(blobs), 256)])
    log.info("embedded %d %s in %.0f s", len(blobs), what, time.time() - start)
    return out.astype(np.float32)


def min_degree_independent_set(adjacent: np.ndarray, prefer: np.ndarray | None = None) -> np.ndarray:
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
            stored[name] = embed(embedder, [v[name] for v in variants], f"edits {name}")
            if cache is not None:
                np.savez(cache, **stored)
        out[name] = stored[name]
    return out


def select(args: argparse.Namespace, path: Path = POOL_PATH) -> dict[str, Any]:
    """Choose the pool (see the module docstring) with ``args``' tile size, image size, JPEG quality,
    ``distinct`` and ``robust`` cosines and embedding ``cache``; write it to ``path`` and return its
    summary (the pool without the tile list, plus the edit-to-own cosine statistics of the kept tiles)."""
    tiles = candidates(args.tile)
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
        base = embed(embedder, blobs, "tiles")
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
    chosen = min_degree_independent_set(adjacent, prefer=robust)
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
        "about": "Photo tiles for `copyguard sample-data`, chosen by `python -m "
        "copyguard.pipelines.lab.image_pool select`: [photo, y, x, size, downscale, editable]. No two tiles are SSCD copies of each other; "
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
    atomic_write(str(path), (text + "\n").encode("utf-8"))
    log.info("wrote %s", path)
    to_own_stats = {n: stats(to_own[robust[:] & chosen, k]) for k, n in enumerate(names)}
    return {**{k: v for k, v in pool.items() if k != "tiles"}, "editable_edit_to_own": to_own_stats}


def stats(values: np.ndarray) -> dict[str, Any]:
    """Count, min, 1/5/50/95/99th percentiles and max of ``values`` (rounded to 3 decimals)."""
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


def main(argv: list[str] | None = None) -> int:
    """``python -m copyguard.pipelines.lab.image_pool select ...``: choose and write the pool."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sel = sub.add_parser(
        "select", help="choose the image pool and write pipelines/lab/assets/image_pool.json"
    )
    sel.add_argument("--tile", type=int, default=32)
    sel.add_argument("--size", type=int, default=64)
    sel.add_argument("--quality", type=int, default=90)
    sel.add_argument("--distinct", type=float, default=0.5)
    sel.add_argument("--robust", type=float, default=0.7)
    sel.add_argument("--cache", default=None, help="npz file caching the embeddings between runs")
    sel.add_argument("--out", default=str(POOL_PATH), help="pool file to write (default: the shipped one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    json.dump(select(args, Path(args.out)), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
