"""Large base images of the ``hard`` preset: 96 px photo tiles that SSCD keeps apart.

Neighbouring regions of one texture-like photo (grass, gravel, brick, a star field) are SSCD copies of each
other (cosine up to 0.9 at 224 px), so a plain grid would plant false "distinct" pairs. ``select`` embeds
every :data:`LARGE_TILE` px grid tile at 224 px with SSCD (Pizzi et
al., CVPR 2022) and keeps a greedy maximum independent set of the graph "cosine >= 0.5", the rule of the
64 px pool (``image_pool.py``). The result ships as ``assets/large_pool.json``; rebuild it with

    python -m copyguard.pipelines.lab.large_pool
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np

from copyguard.pipelines.lab.sample_images import PHOTO_NAMES, Tile, encode_jpeg, grid_tiles, render_tile

__all__ = ["DISTINCT_MAX_COSINE", "LARGE_TILE", "RENDER_SIZE", "large_tiles", "load_large_pool", "select"]

DISTINCT_MAX_COSINE = 0.5
RENDER_SIZE = 224
LARGE_TILE = 96  # photo pixels per side of a large base image (rendered at large_image_size)
_PATH = Path(__file__).parent / "assets" / "large_pool.json"


def load_large_pool() -> list[Tile]:
    """The shipped large tiles (``assets/large_pool.json``), in file order."""
    text = resources.files("copyguard.pipelines.lab.assets").joinpath("large_pool.json").read_text("utf-8")
    return [Tile.from_json(row) for row in json.loads(text)["tiles"]]


def large_tiles() -> list[Tile]:
    """Disjoint :data:`LARGE_TILE` px grid tiles of every photo (near-uniform ones skipped)."""
    return [t for name in PHOTO_NAMES for t in grid_tiles(name, LARGE_TILE, min_std=12.0)]


def select(path: Path = _PATH) -> dict:
    """Embed every large grid tile, keep an independent set of the 'copies' graph, write ``path``."""
    from copyguard.curation.embedders import embedder_info, load_embedder
    from copyguard.pipelines.lab.image_pool import min_degree_independent_set

    tiles = large_tiles()
    embedder = load_embedder("sscd-onnx")
    blobs = [encode_jpeg(render_tile(t, RENDER_SIZE), 90) for t in tiles]
    emb = np.concatenate([embedder.embed_bytes(blobs[i : i + 64]) for i in range(0, len(blobs), 64)])
    sim = emb @ emb.T
    np.fill_diagonal(sim, -1)
    chosen = min_degree_independent_set(sim >= DISTINCT_MAX_COSINE)
    doc = {
        "about": "Large photo tiles for `sample-data --preset hard`: [photo, y, x, size, downscale, "
        "editable]; no two are SSCD copies (cosine < 0.5 at 224 px). Built by "
        "`python -m copyguard.pipelines.lab.large_pool`.",
        "candidates": len(tiles),
        "distinct_max_cosine": DISTINCT_MAX_COSINE,
        "render_size": RENDER_SIZE,
        "model": embedder_info(embedder),
        "tiles": [tiles[int(i)].to_json() for i in np.flatnonzero(chosen)],
    }
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return doc


if __name__ == "__main__":
    result = select()
    print(f"kept {len(result['tiles'])} of {result['candidates']} large tiles")
