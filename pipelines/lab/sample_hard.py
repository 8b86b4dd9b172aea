"""The ``hard`` sample-data preset: every copy-edit family at two image sizes, plus caption pairs.

Planted by :func:`plant_hard` into the :mod:`copyguard.pipelines.lab.sample_data` builder:

- image groups: for each family of :data:`~copyguard.pipelines.lab.hard_edits.EDIT_FAMILIES` and each
  size (``image_size``, 64 px by default, and ``large_image_size``, 224 px by default), ``image_groups``
  originals with 1 or more edits each (``kind`` ``image_<family>``). Small originals are the SSCD-checked
  pool tiles (32 px photo regions); large ones are disjoint 96 px grid tiles of the same photos that SSCD keeps apart
  (``assets/large_pool.json``, :mod:`copyguard.pipelines.lab.large_pool`), textures included;
- ``unique`` samples (half small, half large, as far as the tiles go): their own image and caption;
- caption pairs from :func:`~copyguard.pipelines.lab.caption_pairs.caption_pair_set`, ``caption_groups``
  of each: must-merge (``caption_merge_<edit>``, one caption group) and must-not-merge
  (``caption_split_<edit>``, two groups), each caption over its own unique image.

The seed picks the half: even seeds draw every base image from one half of the tiles (the tuning half),
odd seeds from the other (the held-out half), so no photo region is in both. Ground-truth rows carry
``size`` (the original's side) besides ``kind``, and caption-pair rows ``pair``: the partner's key.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from copyguard.common.errors import UsageError
from copyguard.pipelines.lab.caption_pairs import caption_pair_set
from copyguard.pipelines.lab.hard_edits import EDIT_FAMILIES, apply_edit
from copyguard.pipelines.lab.large_pool import LARGE_TILE, load_large_pool
from copyguard.pipelines.lab.sample_images import (
    Tile,
    decode,
    encode_jpeg,
    load_image_pool,
    render_tile,
)

__all__ = ["HARD_IMAGE_KINDS", "hard_caption_kinds", "plant_hard"]

HARD_IMAGE_KINDS = tuple(f"image_{family}" for family in EDIT_FAMILIES)
_HALF_SEED = 20240613  # fixes which tiles fall in which half, whatever the build seed


def hard_caption_kinds() -> tuple[str, ...]:
    """Caption kinds the preset plants (must-merge, then must-not-merge edits)."""
    from copyguard.pipelines.lab.caption_pairs import MERGE_EDITS, SPLIT_EDITS

    return (*(f"caption_merge_{e}" for e in MERGE_EDITS), *(f"caption_split_{e}" for e in SPLIT_EDITS))


def _half(tiles: list[Any], seed: int) -> list[Any]:
    """The tuning (even ``seed``) or held-out (odd) half of ``tiles``, split by a fixed permutation."""
    order = np.random.default_rng(_HALF_SEED).permutation(len(tiles))
    return [tiles[int(i)] for k, i in enumerate(order) if k % 2 == seed % 2]


def plant_hard(builder: Any) -> None:
    """Plant the ``hard`` preset into ``builder`` (a ``sample_data._Builder``)."""
    cfg, c, rng = builder.cfg, builder.counts, builder.rng
    small_size, large_size = cfg.size, c.large_image_size or 224
    pool = _half(load_image_pool(), cfg.seed)
    small_edit = [pool[int(i)] for i in rng.permutation(len(pool)) if pool[int(i)].editable]
    small_plain = [t for t in pool if not t.editable]
    small_plain = [small_plain[int(i)] for i in rng.permutation(len(small_plain))]
    large = _half(load_large_pool(), cfg.seed)
    large = [large[int(i)] for i in rng.permutation(len(large))]
    n_groups = len(EDIT_FAMILIES) * c.image_groups
    if n_groups > len(large) or n_groups > len(small_edit):
        raise UsageError(
            f"preset 'hard' needs {n_groups} originals per size but the half has {len(large)} large and "
            f"{len(small_edit)} small editable tiles; lower sample_data.presets.hard.image_groups"
        )
    sources = {
        small_size: (iter(small_edit[:n_groups]), iter(small_edit[n_groups:] + small_plain)),
        large_size: (iter(large[:n_groups]), iter(large[n_groups:])),
    }
    sizes = {}

    def base(tile: Tile, size: int) -> bytes:
        return encode_jpeg(render_tile(tile, size), cfg.jpeg_quality)

    def add(kind: str, image: bytes, size: int, **groups: Any) -> int:
        index = builder._add(kind, image, builder._next(builder._captions).encode(), **groups)
        sizes[index] = size
        return index

    for family in EDIT_FAMILIES:
        for size in (small_size, large_size):
            for _ in range(c.image_groups):
                original = base(next(sources[size][0]), size)
                copies = int(rng.integers(c.image_group_min, c.image_group_max + 1))
                kind = f"image_{family}"
                group = add(kind, original, size, copies=copies)
                for _ in range(copies - 1):
                    edited, quality = apply_edit(family, decode(original), rng)
                    add(kind, encode_jpeg(edited, quality or cfg.jpeg_quality), size, image_group=group,
                        copies=copies)  # fmt: skip
    unique_sizes = [small_size, large_size] * c.unique
    for size in unique_sizes[: c.unique]:
        tile = next(sources[size][1], None) or next(sources[small_size][1])
        add("unique", base(tile, size if tile.size == LARGE_TILE else small_size), size)
    pairs: dict[int, int] = {}
    _plant_caption_pairs(builder, sources[small_size][1], small_size, sizes, pairs)
    builder.extra_fields = {i: {"size": s} for i, s in sizes.items()}
    for i, partner in pairs.items():
        builder.extra_fields[i]["pair"] = partner  # sample_data writes the partner's key


def _plant_caption_pairs(
    builder: Any, tiles: Any, size: int, sizes: dict[int, int], pairs: dict[int, int]
) -> None:
    """Each caption pair over two fresh unique images; ``pairs`` maps each planted index to its partner."""
    cfg = builder.cfg
    for pair in caption_pair_set(builder.counts.caption_groups, seed=cfg.seed):
        # a sample that already carries the pair's source caption (or either caption) would be an unlabelled
        # near-duplicate of the pair (e.g. "X" beside "X - SKU 1" and "X - SKU 2"): skip the pair
        if {pair.a, pair.b, pair.source} & builder._used or pair.a == pair.b:
            continue
        builder._used.update((pair.a, pair.b, pair.source))
        kind = f"caption_{'merge' if pair.duplicate else 'split'}_{pair.edit}"
        drawn = [next(tiles, None), next(tiles, None)]
        if drawn[1] is None:
            raise UsageError("preset 'hard': the image pool ran out; lower caption_groups")
        first, second = (encode_jpeg(render_tile(t, size), cfg.jpeg_quality) for t in drawn)
        copies = 2 if pair.duplicate else 1
        group = builder._add(kind, first, pair.a.encode(), copies=copies)
        builder._add(kind, second, pair.b.encode(), caption_group=group if pair.duplicate else None,
                     copies=copies)  # fmt: skip
        sizes[group] = sizes[group + 1] = size
        pairs[group], pairs[group + 1] = group + 1, group
