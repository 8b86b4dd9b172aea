"""The generate-and-measure loop (Chen et al., CVPR 2024; Somepalli et al., NeurIPS 2023).

Images are made for (prompt, seed) pairs through :func:`copyguard.mitigation.generate.generate_images`, the
code path of ``copyguard generate``, and measured by ``sim(g) = max_x cos(E(g), E(x))`` (SSCD) against

- the prompt's own training image(s) (:class:`OwnImages`: one image per image group, duplicated copies
  collapse), when the ground truth says which image a prompt should reproduce (the lab, the benchmarks);
- the nearest training image of the whole set (:class:`NearestTraining`: through the curation job's index,
  or pixel nL2 against the training shards as in Chen et al., CVPR 2024), when it does not (the audit).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from copyguard.common.errors import UsageError
from copyguard.mitigation.metrics import max_cosine_to_groups, pixel_nl2

__all__ = [
    "Generated",
    "NearestTraining",
    "OwnImages",
    "first_of_groups",
    "generate_chunked",
    "generate_grid",
    "load_training_images",
]


@dataclass
class Generated:
    """Images (uint8 ``[N, H, W, 3]``, prompt-major then seed), one record per image, generation seconds."""

    images: np.ndarray
    records: list[dict[str, Any]]
    seconds: float


def generate_grid(
    pipe: Any, cfg: Any, captions: Sequence[str], seeds: Sequence[int], index: Any = None
) -> Generated:
    """Every caption with every seed through ``generate_images`` (``cfg`` a ``GenerateConfig``; its seeds are
    replaced), returned prompt-major. Each image's ``x_T`` depends only on its seed, not on the batch."""
    from copyguard.mitigation.generate import generate_images

    seeds = [int(s) for s in seeds]
    t0 = time.perf_counter()
    items = list(generate_images(pipe, list(captions), cfg.model_copy(update={"seeds": seeds}), index=index))
    items.sort(key=lambda it: (it.prompt_index, seeds.index(it.seed)))
    images = np.stack([np.asarray(it.image.convert("RGB"), dtype=np.uint8) for it in items])
    return Generated(images, [it.record for it in items], time.perf_counter() - t0)


def generate_chunked(pipe: Any, cfg: Any, captions: Sequence[str], seed: int, index: Any = None) -> Generated:
    """One image per caption (for FID): chunk ``k`` of ``cfg.batch_size`` captions uses seed ``seed + k``
    (``generate_images`` gives one seed to a batch; one call per caption would cost ~5x more on a CPU)."""
    size = cfg.batch_size
    chunks = [list(captions[i : i + size]) for i in range(0, len(captions), size)]
    parts = [generate_grid(pipe, cfg, c, [seed + k], index) for k, c in enumerate(chunks)]
    return Generated(
        np.concatenate([p.images for p in parts]),
        [r for p in parts for r in p.records],
        sum(p.seconds for p in parts),
    )


def first_of_groups(
    groups: Iterable[Any], wanted: Iterable[Any] | None = None
) -> tuple[list[int], list[str]]:
    """The index of the first row of each distinct group (first-seen order) and the group names; only the
    ``wanted`` groups when given. One training image per image group: duplicated copies collapse."""
    keep = None if wanted is None else {str(g) for g in wanted}
    first: dict[str, int] = {}
    for i, g in enumerate(groups):
        name = str(g)
        if keep is None or name in keep:
            first.setdefault(name, i)
    return list(first.values()), list(first.keys())


@dataclass
class OwnImages:
    """SSCD embeddings of each image group's training image; ``__call__`` gives the ``sim`` of generated
    embeddings against their own group's image(s)."""

    embeddings: np.ndarray
    groups: list[str]

    @classmethod
    def build(
        cls, embedder: Any, images: np.ndarray, groups: Sequence[Any], wanted: Iterable[Any] | None = None
    ) -> OwnImages:
        """Embed the first training image of every (``wanted``) group of ``images`` (rows match ``groups``)."""
        rows, names = first_of_groups(groups, wanted)
        if not rows:
            raise UsageError("no training image of the wanted groups")
        return cls(embedder.embed([images[i] for i in rows]), names)

    def __call__(self, embeddings: np.ndarray, groups: Sequence[Any]) -> np.ndarray:
        """Per generated row, the highest cosine to the training image(s) of its group."""
        return max_cosine_to_groups(embeddings, self.embeddings, [str(g) for g in groups], self.groups)


def load_training_images(patterns: str, keys: Iterable[str] | None = None, size: int | None = None) -> dict:
    """``{key: uint8 HWC}`` of the training shards' samples (only ``keys`` when given), resized to ``size``."""
    from copyguard.curation.images import to_rgb_array
    from copyguard.curation.records import Sample
    from copyguard.curation.shards import iter_samples

    wanted = None if keys is None else set(keys)
    images: dict[str, np.ndarray] = {}
    for rec in iter_samples(patterns):
        if isinstance(rec, Sample) and (wanted is None or rec.key in wanted) and rec.key not in images:
            images[rec.key] = to_rgb_array(rec.image, size)
    return images


class NearestTraining:
    """Nearest training image and similarity per generated image: SSCD through the curation job's index, or
    pixel nL2 (Chen et al., CVPR 2024) against the training shards.

    ``cfg`` carries ``similarity`` (``"sscd"`` | ``"nl2"``), ``embedder`` / ``embedder_path`` (None: the
    index's own embedder) and ``nl2_k`` / ``nl2_alpha`` (an ``AuditConfig`` does).
    """

    def __init__(self, cfg: Any, index: Any, train_glob: str | None) -> None:
        self.cfg, self.index = cfg, index
        self.train: np.ndarray | None = None
        if cfg.similarity == "nl2":
            if not train_glob:
                raise UsageError("audit.similarity=nl2 needs the training images (audit.train_images)")
            self.train_glob = train_glob
            return
        from copyguard.curation.embedders import EMBEDDER_KINDS, load_embedder

        info = index.info.get("embedder", {})
        name = str(info.get("name", "?"))
        kind = cfg.embedder or ("torchscript" if name.startswith("torchscript:") else name)
        if kind not in EMBEDDER_KINDS:
            raise UsageError(
                f"the index was built with embedder {name!r}, which the audit cannot load; "
                f"set audit.embedder to one of {', '.join(EMBEDDER_KINDS)}"
            )
        import torch

        size = int(info.get("input_size", 320))
        self.embedder = load_embedder(kind, cfg.embedder_path, size, threads=torch.get_num_threads())
        index.check_compatible(self.embedder, strict=True)

    def __call__(self, images: Sequence[np.ndarray]) -> tuple[list[str | None], list[float]]:
        """The nearest training key (None where the index has none) and the similarity of each image."""
        if self.cfg.similarity == "sscd":
            res = self.index.nearest(self.embedder.embed(list(images)), k=1)
            keys = [k if k is None else str(k) for k in res.keys[:, 0]]
            return keys, [float(s) for s in res.similarities[:, 0]]
        if self.train is None:
            pixels = load_training_images(self.train_glob, size=images[0].shape[0])
            if not pixels:
                raise UsageError(f"no training images in {self.train_glob}")
            self.train_keys, self.train = list(pixels), np.stack(list(pixels.values()))
        nl2, nearest = pixel_nl2(np.stack(images), self.train, self.cfg.nl2_k, self.cfg.nl2_alpha)
        return [self.train_keys[i] for i in nearest], [float(v) for v in nl2]
