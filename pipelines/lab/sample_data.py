"""``copyguard sample-data``: real images and captions as WebDataset shards, with planted duplicates.

The builder draws base images from :mod:`copyguard.pipelines.lab.sample_images` (SSCD-checked photo tiles) and
captions from :mod:`copyguard.pipelines.lab.sample_captions` (real COCO and LAION captions, no two alike),
plants duplicate groups of known kinds, shuffles everything with the seed, names samples ``s0000000``...
in shuffled order (a key says nothing about its kind) and writes

- ``shard-000000.tar`` ... with :class:`~copyguard.curation.shards.ShardWriter`, then one more shard of
  broken samples (written with :mod:`tarfile`: a reader must reject them);
- ``ground_truth.jsonl``: per key ``image_group``, ``caption_group`` (the key of the group's original;
  samples sharing one are duplicates of each other), ``kind`` and ``copies`` (the size of the planted
  group, 1 for a unique sample).

Kinds (copyguard's evaluation protocol): ``unique``; ``image_exact``, ``image_jpeg``, ``image_crop``, ``image_resize``,
``image_color``, ``image_overlay`` (one image, or near-copies of it, under distinct captions);
``caption_exact``, ``caption_case``, ``caption_punct``, ``caption_words`` (one caption, or near-copies of
it, over distinct images); ``dup_pair`` (the same caption over copies of the same image, the pattern a
diffusion model memorizes); ``template_caption`` (one templated LAION caption over many images);
``broken_corrupt_image``, ``broken_missing_caption``, ``broken_non_utf8``. The ``hard`` preset plants
instead every copy-edit family at two sizes and caption pairs that must and must not merge
(:mod:`copyguard.pipelines.lab.sample_hard`; its rows also carry ``size``). The same seed gives the same
bytes.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from copyguard.common.errors import UsageError
from copyguard.common.fileops import atomic_write, temp_name
from copyguard.curation.records import Sample
from copyguard.curation.shards import ShardWriter
from copyguard.pipelines.lab.config import SampleDataConfig
from copyguard.pipelines.lab.sample_captions import (
    case_variants,
    load_caption_pool,
    punct_variants,
    word_variants,
)
from copyguard.pipelines.lab.sample_hard import HARD_IMAGE_KINDS, hard_caption_kinds, plant_hard
from copyguard.pipelines.lab.sample_images import (
    IMAGE_EDIT_KINDS,
    Tile,
    colourfulness,
    encode_jpeg,
    load_image_pool,
    make_variant,
    mnist_mosaic,
    render_tile,
)

__all__ = [
    "CAPTION_KINDS",
    "HARD_KINDS",
    "IMAGE_KINDS",
    "KINDS",
    "build_sample_data",
    "existing_outputs",
]

log = logging.getLogger(__name__)

IMAGE_KINDS = ("image_exact", *IMAGE_EDIT_KINDS)
CAPTION_KINDS = ("caption_exact", "caption_case", "caption_punct", "caption_words")
BROKEN_KINDS = ("broken_corrupt_image", "broken_missing_caption", "broken_non_utf8")
KINDS = ("unique", *IMAGE_KINDS, *CAPTION_KINDS, "dup_pair", "template_caption", *BROKEN_KINDS)
# The hard preset's kinds (sample_hard.py): an image kind per edit family, caption-pair kinds.
HARD_KINDS = ("unique", *HARD_IMAGE_KINDS, *hard_caption_kinds())
GROUND_TRUTH = "ground_truth.jsonl"
SHARD_PREFIX = "shard"


@dataclass
class _Planned:
    """One sample before it has a key. Groups are creation indices of their original."""

    kind: str
    image: bytes
    caption: bytes | None
    image_group: int
    caption_group: int
    copies: int


class _Builder:
    def __init__(self, cfg: SampleDataConfig) -> None:
        self.cfg = cfg
        self.counts = cfg.counts
        self.rng = np.random.default_rng(cfg.seed)
        self.planned: list[_Planned] = []
        self.extra_fields: dict[int, dict[str, Any]] = {}  # more ground-truth fields per planned index
        if cfg.preset != "hard":  # the hard preset draws its own tiles (sample_hard.py)
            self._prepare_images()
        self._prepare_captions()

    # ---- pools -------------------------------------------------------------------------------------
    def _prepare_images(self) -> None:
        """Shuffle the pool; edited originals (image edit kinds, dup_pair) come from its editable tiles."""
        c, preset = self.counts, self.cfg.preset
        pool = load_image_pool()
        order = [pool[int(i)] for i in self.rng.permutation(len(pool))]
        editable = [t for t in order if t.editable]
        n_dup = len(c.dup_counts) * c.dup_groups_per_count
        n_edit = len(IMAGE_EDIT_KINDS) * c.image_groups + n_dup
        need = (
            c.unique
            + len(IMAGE_KINDS) * c.image_groups
            + len(CAPTION_KINDS) * c.caption_groups * c.caption_group_max
            + n_dup
            + c.template_groups * c.template_max
        )
        if n_edit > len(editable) or need > len(order):
            raise UsageError(
                f"preset '{preset}' needs up to {need} distinct images ({n_edit} editable) but the image "
                f"pool has {len(order)} ({len(editable)} editable); lower "
                f"sample_data.presets.{preset}.unique or the group counts"
            )
        # dup_pair images (the ones a model will memorize): the most colourful, busiest of a draw.
        draw = editable[: 8 * n_dup]
        score = [colourfulness(render_tile(t, t.size)) for t in draw]
        vivid = sorted(sorted(range(len(draw)), key=lambda i: -score[i])[:n_dup])
        self._dup_tiles = [draw[i] for i in vivid]
        rest = [t for i, t in enumerate(editable) if i not in set(vivid)]
        self._edit_tiles = iter(rest[: n_edit - n_dup])
        self._tiles = iter([t for t in order if not t.editable] + rest[n_edit - n_dup :])

    def _base_image(self, tile: Tile | None = None) -> bytes:
        tile = tile if tile is not None else next(self._tiles)
        return encode_jpeg(render_tile(tile, self.cfg.size), self.cfg.jpeg_quality)

    def _prepare_captions(self) -> None:
        pool = load_caption_pool()
        general = list(pool.coco) + list(pool.laion)
        self._captions = iter(general[int(i)] for i in self.rng.permutation(len(general)))
        # Caption edits need plain ASCII captions of >= 8 words (COCO's), kept apart from the rest.
        editable = [t for t in pool.coco if t.isascii() and len(t.split()) >= 8]
        self._editable = iter(editable[int(i)] for i in self.rng.permutation(len(editable)))
        self._used: set[str] = set()
        self._memorized = iter(pool.memorized[int(i)] for i in self.rng.permutation(len(pool.memorized)))
        self._templates = iter(pool.templates[int(i)] for i in self.rng.permutation(len(pool.templates)))

    def _next(self, source) -> str:
        for text in source:
            if text not in self._used:
                self._used.add(text)
                return text
        raise UsageError(
            f"the caption pool ran out for preset '{self.cfg.preset}'; lower its counts "
            f"(sample_data.presets.{self.cfg.preset}.*)"
        )

    # ---- planting ----------------------------------------------------------------------------------
    def _add(self, kind: str, image: bytes, caption: bytes | None, image_group: int | None = None,
             caption_group: int | None = None, copies: int = 1) -> int:  # fmt: skip
        index = len(self.planned)
        self.planned.append(
            _Planned(
                kind,
                image,
                caption,
                index if image_group is None else image_group,
                index if caption_group is None else caption_group,
                copies,
            )
        )
        return index

    def _distinct_variant(self, kind: str, base: bytes, seen: set[bytes]) -> bytes:
        """An edit of ``base`` whose bytes differ from every image already in its group."""
        for _ in range(200):
            image = make_variant(kind, base, self.rng, self.cfg.jpeg_quality)
            if image not in seen:
                seen.add(image)
                return image
        raise RuntimeError(f"could not draw a new {kind} edit")  # pragma: no cover - 4 edits at most

    def _size(self, low: int, high: int) -> int:
        return int(self.rng.integers(low, high + 1))

    def plant(self) -> list[_Planned]:
        if self.cfg.preset == "hard":
            plant_hard(self)
            return self.planned
        c = self.counts
        q = self.cfg.jpeg_quality
        for _ in range(c.unique):
            self._add("unique", self._base_image(), self._next(self._captions).encode())
        for kind in IMAGE_KINDS:
            for _ in range(c.image_groups):
                size = self._size(c.image_group_min, c.image_group_max)
                base = self._base_image(None if kind == "image_exact" else next(self._edit_tiles))
                group = self._add(kind, base, self._next(self._captions).encode(), copies=size)
                seen = {base}
                for _ in range(size - 1):
                    image = base if kind == "image_exact" else self._distinct_variant(kind, base, seen)
                    self._add(
                        kind, image, self._next(self._captions).encode(), image_group=group, copies=size
                    )
        edits = {
            "caption_case": case_variants,
            "caption_punct": punct_variants,
            "caption_words": word_variants,
        }
        for kind in CAPTION_KINDS:
            for _ in range(c.caption_groups):
                size = self._size(c.caption_group_min, c.caption_group_max)
                variants: list[str] = []
                while not variants:  # a caption that allows no edit of this kind is skipped
                    caption = self._next(self._editable)
                    variants = (
                        [caption] * (size - 1)
                        if kind == "caption_exact"
                        else edits[kind](caption, size - 1, self.rng)
                    )
                size = len(variants) + 1
                group = self._add(kind, self._base_image(), caption.encode(), copies=size)
                for text in variants:
                    self._add(kind, self._base_image(), text.encode(), caption_group=group, copies=size)
        for count in c.dup_counts:
            for _ in range(c.dup_groups_per_count):
                base = self._base_image(self._dup_tiles.pop())
                caption = self._next(self._memorized).encode()
                reencode = set(
                    self.rng.choice(np.arange(1, count), min(c.dup_reencoded, count - 1), replace=False)
                )
                group = self._add("dup_pair", base, caption, copies=count)
                for copy in range(1, count):
                    image = make_variant("image_jpeg", base, self.rng, q) if copy in reencode else base
                    self._add(
                        "dup_pair", image, caption, image_group=group, caption_group=group, copies=count
                    )
        for _ in range(c.template_groups):
            size = self._size(c.template_min, c.template_max)
            caption = self._next(self._templates).encode()
            group = self._add("template_caption", self._base_image(), caption, copies=size)
            for _ in range(size - 1):
                self._add("template_caption", self._base_image(), caption, caption_group=group, copies=size)
        self._plant_broken()
        return self.planned

    def _plant_broken(self) -> None:
        n = self.counts.broken_per_kind
        if not n:
            return
        digits = self.rng.permutation(5000)[: 12 * n]
        mosaics = [
            encode_jpeg(
                mnist_mosaic(digits[4 * i : 4 * i + 4], self.cfg.size, self.rng), self.cfg.jpeg_quality
            )
            for i in range(3 * n)
        ]
        for i in range(n):
            # Even ones are truncated part way; odd ones garbled: the header is zeroed, so no image
            # format recognizes the bytes.
            data = mosaics[i]
            cut = int(len(data) * self.rng.uniform(0.3, 0.8))
            data = data[:cut] if i % 2 == 0 else bytes(16) + data[16:]
            self._add("broken_corrupt_image", data, self._next(self._captions).encode())
        for i in range(n):
            self._add("broken_missing_caption", mosaics[n + i], None)
        for i in range(n):
            text = self._next(self._captions).encode()
            cut = len(text) // 2
            self._add("broken_non_utf8", mosaics[2 * n + i], text[:cut] + b"\xff\xfe" + text[cut:])


def existing_outputs(out: str | Path) -> list[Path]:
    """The files a previous build left in ``out`` (its shards and ground truth)."""
    folder = Path(out)
    if not folder.is_dir():
        return []
    found = sorted(folder.glob(f"{SHARD_PREFIX}-*.tar"))
    return found + ([folder / GROUND_TRUTH] if (folder / GROUND_TRUTH).exists() else [])


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write_raw_shard(path: Path, members: list[tuple[str, bytes]]) -> None:
    """A tar of raw members (deterministic: mtime 0, no owner), written under a temp name then renamed."""
    tmp = temp_name(str(path))
    try:
        with (
            open(tmp, "wb") as handle,
            tarfile.open(fileobj=handle, mode="w|", format=tarfile.USTAR_FORMAT) as tar,
        ):
            for name, data in members:
                tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def build_sample_data(cfg: SampleDataConfig, out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Build the preset ``cfg.preset`` into ``out``; returns a summary (counts per kind, shards, seconds).

    Refuses (:class:`UsageError`) a folder that already holds shards or a ground truth unless
    ``overwrite``, which deletes those files first (nothing else in the folder is touched).
    """
    start = time.perf_counter()
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {folder} exists and is not a directory")
    old = existing_outputs(folder)
    if old and not overwrite:
        raise UsageError(f"--out {folder} already holds sample data ({old[0].name}...); pass --overwrite")
    builder = _Builder(cfg)  # pool checks fail here, before anything is deleted or written
    planned = builder.plant()
    for path in old:
        path.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    positions = builder.rng.permutation(len(planned))
    keys = [f"s{int(p):07d}" for p in positions]
    order = sorted(range(len(planned)), key=keys.__getitem__)

    broken: list[tuple[str, bytes]] = []
    with ShardWriter(str(folder), SHARD_PREFIX, max_count=cfg.counts.samples_per_shard) as writer:
        for i in order:
            item, key = planned[i], keys[i]
            if item.kind in BROKEN_KINDS:
                broken.append((f"{key}.jpg", item.image))
                if item.caption is not None:
                    broken.append((f"{key}.txt", item.caption))
                continue
            width, height = Image.open(io.BytesIO(item.image)).size
            caption = (item.caption or b"").decode("utf-8")
            writer.write(Sample(key=key, caption=caption, image=item.image, width=width, height=height))
        shards = list(writer.close())
        next_index = writer.index
    if broken:
        path = folder / f"{SHARD_PREFIX}-{next_index:06d}.tar"
        _write_raw_shard(path, broken)
        shards.append(str(path))

    lines = []
    for i in order:
        item = planned[i]
        row = {
            "key": keys[i],
            "image_group": keys[item.image_group],
            "caption_group": keys[item.caption_group],
            "kind": item.kind,
            "copies": item.copies,
            **builder.extra_fields.get(i, {}),
        }
        if "pair" in row:  # the partner of a caption pair, planted by index
            row["pair"] = keys[row["pair"]]
        lines.append(json.dumps(row))
    atomic_write(str(folder / GROUND_TRUTH), ("\n".join(lines) + "\n").encode("utf-8"))

    kinds = Counter(item.kind for item in planned)
    summary = {
        "out": str(folder),
        "preset": cfg.preset,
        "seed": cfg.seed,
        "samples": len(planned),
        "valid": len(planned) - sum(kinds[k] for k in BROKEN_KINDS),
        "broken": sum(kinds[k] for k in BROKEN_KINDS),
        "shards": len(shards),
        "kinds": {k: kinds[k] for k in dict.fromkeys((*KINDS, *HARD_KINDS)) if kinds[k]},
        "seconds": round(time.perf_counter() - start, 2),
    }
    log.info(
        "sample-data: %d samples (%d broken) in %d shards under %s in %.1f s",
        summary["samples"], summary["broken"], summary["shards"], folder, summary["seconds"],
    )  # fmt: skip
    return summary
