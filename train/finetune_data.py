"""The fine-tuning data: an endless, seeded WebDataset stream of ``(key, image, caption)`` batches.

Per epoch ``e`` the shard list is shuffled with ``(seed, e)``, split per rank (webdataset's
``split_by_node``) and per DataLoader worker (``split_by_worker``), read with curation's shard reader
(:func:`copyguard.curation.shards.read_shard_file`: the same grouping, limits and rejection reasons as the
curation job, so a shard that curation survives the trainer survives too) and passed through a shuffle
buffer seeded with ``(seed, e, rank, worker)``. Every per-sample random choice (crop offset, flip, caption
dropout) comes from ``(seed, epoch, key)``, so a run repeats exactly whatever the worker interleaving. A
rejected sample (no decodable image, no UTF-8 caption, a duplicated key, an oversize member...) is skipped
and counted under its reject reason (the count rides along in each batch), never fatal. Images are decoded
pre-shrunk towards the training size (``decode_image(min_side=...)``), never as a full-size RGB copy. A
resumed run skips the batches it already consumed.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from copyguard.common.errors import UsageError
from copyguard.common.fileops import expand_paths
from copyguard.curation.images import ImageDecodeError, decode_image
from copyguard.curation.records import Rejection, Sample
from copyguard.curation.shards import read_shard_file
from copyguard.train.config import DataConfig

__all__ = ["Batch", "ShardStream", "make_loader", "prepare_image", "shard_paths"]

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """``pixels`` [B, 3, R, R] in [-1, 1], captions (already dropped to '' where chosen), keys."""

    keys: list[str]
    captions: list[str]
    pixels: torch.Tensor
    skipped: dict[str, int] = field(default_factory=dict)


def shard_paths(pattern: str | list[str]) -> list[str]:
    """The shard files matching ``pattern`` (a glob, a comma list or a list); none is a usage error."""
    patterns = pattern.split(",") if isinstance(pattern, str) else pattern
    paths = expand_paths([p.strip() for p in patterns if p.strip()])
    if not paths:
        raise UsageError(f"no shards match {pattern!r}")
    return paths


def _rng(*parts: Any) -> random.Random:
    return random.Random(":".join(str(p) for p in parts))


def prepare_image(
    img: Image.Image, size: int, center_crop: bool, flip: bool, rng: random.Random
) -> np.ndarray:
    """RGB, shorter side resized to ``size`` (bicubic), cropped to ``size`` x ``size``, optionally flipped."""
    img = img.convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    if center_crop:
        left, top = (nw - size) // 2, (nh - size) // 2
    else:
        left, top = rng.randint(0, nw - size), rng.randint(0, nh - size)
    img = img.crop((left, top, left + size, top + size))
    if flip and rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(img, dtype=np.uint8)


class ShardStream(torch.utils.data.IterableDataset):
    """Endless batches over the shards (see the module docstring); iterate it inside a DataLoader."""

    def __init__(self, paths: list[str], spec: DataConfig, size: int, batch_size: int, seed: int) -> None:
        super().__init__()
        self.paths, self.spec, self.size = list(paths), spec, size
        self.batch_size, self.seed = batch_size, seed

    def _decode(self, record: Sample | Rejection, epoch: int, skipped: dict[str, int]) -> tuple | None:
        reason = str(record.reason) if isinstance(record, Rejection) else None
        if isinstance(record, Sample):
            try:
                img = decode_image(record.image, self.spec.max_pixels, min_side=self.size)
            except ImageDecodeError as exc:
                reason = str(exc.reason)
        if reason is not None:
            skipped[reason] = skipped.get(reason, 0) + 1
            return None
        key = record.key.rsplit("/", 1)[-1]
        rng = _rng(self.seed, epoch, key)
        arr = prepare_image(img, self.size, self.spec.center_crop, self.spec.random_flip, rng)
        caption = "" if rng.random() < self.spec.caption_dropout else record.caption
        return key, caption.strip(), arr

    def _read(self, sources: Iterator[dict[str, str]]) -> Iterator[Sample | Rejection]:
        """Every record of every shard in ``sources``; images are checked from their header only here,
        since :meth:`_decode` decodes them anyway."""
        for source in sources:
            yield from read_shard_file(
                source["url"],
                self.spec.max_pixels,
                verify_images=False,
                max_member_bytes=self.spec.max_member_bytes,
                max_caption_bytes=self.spec.max_caption_bytes,
                max_metadata_bytes=self.spec.max_metadata_bytes,
            )

    def _epoch(self, epoch: int) -> Iterator[Sample | Rejection]:
        urls = list(self.paths)
        _rng(self.seed, "shards", epoch).shuffle(urls)
        src = wds.split_by_worker(wds.split_by_node(iter([{"url": u} for u in urls])))
        records = self._read(src)
        if self.spec.shuffle_buffer > 1:
            rank, _, worker, _ = wds.utils.pytorch_worker_info()
            rng = _rng(self.seed, "buffer", epoch, rank, worker)
            records = wds.shuffle(self.spec.shuffle_buffer, min(100, self.spec.shuffle_buffer), rng=rng)(
                records
            )
        return records

    def __iter__(self) -> Iterator[Batch]:
        self._skipped: dict[str, int] = {}
        epoch, buf = 0, []
        while True:
            n_valid = 0
            for record in self._epoch(epoch):
                item = self._decode(record, epoch, self._skipped)
                if item is None:
                    continue
                n_valid += 1
                buf.append(item)
                if len(buf) == self.batch_size:
                    yield self._collate(buf)
                    buf = []
            if n_valid == 0:  # this worker's shards hold nothing usable: end its stream
                if buf:
                    yield self._collate(buf)
                return
            epoch += 1

    def _collate(self, items: list[tuple]) -> Batch:
        pixels = torch.from_numpy(np.stack([a for _, _, a in items])).permute(0, 3, 1, 2).float()
        skipped, self._skipped = self._skipped, {}
        return Batch([k for k, _, _ in items], [c for _, c, _ in items], pixels.div(127.5).sub(1.0), skipped)


def _identity(x: Any) -> Any:
    return x


def make_loader(paths: list[str], spec: DataConfig, size: int, batch_size: int, seed: int,
                world_size: int = 1) -> torch.utils.data.DataLoader:  # fmt: skip
    """A DataLoader over :class:`ShardStream` (batching happens in the stream; ``batch_size=None``)."""
    if len(paths) < world_size:
        raise UsageError(
            f"{len(paths)} shard(s) for {world_size} processes: each rank needs at least one shard"
        )
    if spec.workers and len(paths) < world_size * spec.workers:
        log.warning(
            "%d shards for %d workers x %d ranks: some workers idle", len(paths), spec.workers, world_size
        )
    stream = ShardStream(paths, spec, size, batch_size, seed)
    return torch.utils.data.DataLoader(
        stream,
        batch_size=None,
        num_workers=spec.workers,
        collate_fn=_identity,
        persistent_workers=bool(spec.workers),
    )
