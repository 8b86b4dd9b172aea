"""The lab model's training data: WebDataset shards in memory at the model's resolution.

The lab data sets are small (thousands of 64 px images), so every image is decoded once into a uint8
array and every caption tokenized once. Which samples are duplicated image-caption pairs is derived from
the data itself (:func:`duplication`): samples that share both an image group and a caption group are
copies of one pair, ``copies`` = how many of them there are; samples that share neither are unique.
The groups come from ``ground_truth.jsonl`` next to the shards when it is there (its ``image_group`` and
``caption_group``, whatever its ``kind`` column says; ``copies`` is not needed), else from the shards:
the same image bytes (SHA-256) form an image group, the same caption after whitespace and case
normalization a caption group. A few unique samples can be held out of training as the real images FID
is measured against; they are chosen with the seed, so a resumed or repeated run holds out the same ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from copyguard.common.errors import UsageError
from copyguard.common.fileops import expand_paths
from copyguard.common.runtime import progress_bar
from copyguard.curation.images import ImageDecodeError, to_rgb_array
from copyguard.curation.records import Rejection
from copyguard.curation.shards import iter_samples

__all__ = [
    "LabData",
    "derive_groups",
    "duplication",
    "load_ground_truth",
    "load_lab_data",
    "normalize_caption",
    "tokenize_captions",
]

log = logging.getLogger(__name__)

# ``kind`` of a derived row by its ``copies`` (0 unique, 1 image or caption shared alone, >= 2 a pair)
DERIVED_KINDS = ("unique", "partial_dup", "dup_pair")


@dataclass
class LabData:
    """Training and held-out samples: keys, captions, uint8 ``[N, R, R, 3]`` images, ground truth."""

    keys: list[str]
    captions: list[str]
    images: np.ndarray
    heldout_keys: list[str] = field(default_factory=list)
    heldout_captions: list[str] = field(default_factory=list)
    heldout_images: np.ndarray | None = None
    rejections: Counter = field(default_factory=Counter)
    ground_truth: dict[str, dict[str, Any]] = field(default_factory=dict)
    shards: list[str] = field(default_factory=list)
    copies: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.copies:
            self.copies = duplication(self.keys + self.heldout_keys, self.ground_truth)

    def __len__(self) -> int:
        return len(self.keys)

    def info(self) -> dict[str, Any]:
        """A JSON summary for the model card."""
        kinds = Counter(str(self.row(k).get("kind", "-")) for k in self.keys)
        train = set(self.keys)
        pairs = Counter(c for k, c in self.copies.items() if c > 1 and k in train)
        return {
            "shards": len(self.shards),
            "train_samples": len(self.keys),
            "heldout_samples": len(self.heldout_keys),
            "rejected": dict(self.rejections),
            "kinds": dict(kinds),
            "ground_truth": self.ground_truth_source,
            "duplicated_samples_by_copies": {str(c): n for c, n in sorted(pairs.items())},
        }

    @property
    def ground_truth_source(self) -> str:
        """``ground_truth.jsonl`` when any row came from it, else ``derived from the shards``."""
        if any(not row.get("derived") for row in self.ground_truth.values()):
            return "ground_truth.jsonl"
        return "derived from the shards"

    def is_unique(self, key: str) -> bool:
        """True when no other sample shares the key's image group or caption group."""
        return self.copies.get(key, 1) == 0

    def row(self, key: str) -> dict[str, Any]:
        """Ground-truth row of a key (``image_group``, ``caption_group``, optionally ``kind``...)."""
        return self.ground_truth[key]


def load_ground_truth(shard_paths: list[str]) -> dict[str, dict[str, Any]]:
    """Rows of ``ground_truth.jsonl`` in the shards' folder(s), keyed by sample key ({} when absent)."""
    rows: dict[str, dict[str, Any]] = {}
    for folder in sorted({os.path.dirname(os.path.abspath(p)) for p in shard_paths}):
        path = Path(folder) / "ground_truth.jsonl"
        if not path.is_file():
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                rows[str(row["key"])] = row
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UsageError(f"{path} line {n}: not a ground-truth row with a 'key'") from None
    return rows


def normalize_caption(text: str) -> str:
    """A caption compared for identity: whitespace runs collapsed, case folded."""
    return " ".join(text.split()).casefold()


def derive_groups(keys: list[str], captions: list[str], image_hashes: list[str]) -> dict[str, dict[str, Any]]:
    """Ground-truth rows from the shards: the first key of the same image bytes / normalized caption."""
    by_image: dict[str, str] = {}
    by_caption: dict[str, str] = {}
    rows = {}
    for key, cap, digest in zip(keys, captions, image_hashes, strict=True):
        rows[key] = {
            "key": key,
            "image_group": by_image.setdefault(digest, key),
            "caption_group": by_caption.setdefault(normalize_caption(cap), key),
            "derived": True,
        }
    return rows


def duplication(keys: list[str], rows: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Per key: ``copies`` of its duplicated pair (>= 2), 1 when it is only partly duplicated, 0 unique.

    A duplicated pair = samples sharing both the image group and the caption group (the duplicated
    image-caption pairs that Carlini et al. 2023, "Extracting Training Data from Diffusion Models", and
    Somepalli et al. 2023, "Understanding and Mitigating Copy in Diffusion Models", find memorized); a sample
    sharing only one of them (a reused image under another caption, a template caption) is neither a
    pair nor unique. Only ``keys`` are counted, so rejected samples never inflate a count.
    """

    def groups(key: str) -> tuple[str, str]:
        row = rows.get(key) or {}
        img, cap = row.get("image_group"), row.get("caption_group")
        return str(key if img is None else img), str(key if cap is None else cap)

    of = {k: groups(k) for k in keys}
    images = Counter(img for img, _ in of.values())
    captions = Counter(cap for _, cap in of.values())
    pairs = Counter(of.values())
    out = {}
    for k, (img, cap) in of.items():
        if pairs[img, cap] > 1:
            out[k] = pairs[img, cap]
        else:
            out[k] = 0 if images[img] == 1 and captions[cap] == 1 else 1
    return out


def load_lab_data(pattern: str | list[str], resolution: int, heldout: int, seed: int) -> LabData:
    """Read every shard matching ``pattern`` and hold out ``heldout`` unique samples (seeded choice).

    Rejected records are counted by reason and skipped; no usable sample at all is a usage error.
    """
    paths = expand_paths(pattern)
    if not paths:
        raise UsageError(f"no shards match {pattern!r}")
    keys: list[str] = []
    captions: list[str] = []
    images: list[np.ndarray] = []
    hashes: list[str] = []
    rejections: Counter = Counter()
    for rec in progress_bar(iter_samples(paths), desc="read shards", unit="sample", leave=False):
        if isinstance(rec, Rejection):
            rejections[str(rec.reason)] += 1
            continue
        try:
            images.append(to_rgb_array(rec.image, resolution))
        except ImageDecodeError as exc:
            rejections[str(exc.reason)] += 1
            continue
        keys.append(rec.key)
        captions.append(rec.caption)
        hashes.append(hashlib.sha256(rec.image).hexdigest())
    if not keys:
        raise UsageError(f"the shards matching {pattern!r} hold no usable sample")
    if rejections:
        log.warning("skipped %d rejected records: %s", sum(rejections.values()), dict(rejections))
    truth = load_ground_truth(paths)
    missing = [k for k in keys if k not in truth]
    if truth and missing:
        log.warning(
            "%d samples missing from ground_truth.jsonl; their groups derived from the shards", len(missing)
        )
    derived = derive_groups(keys, captions, hashes)
    if truth:  # derived group names must not collide with the ground truth's (both are keys)
        for row in derived.values():
            row["image_group"], row["caption_group"] = (
                f"derived:{row['image_group']}",
                f"derived:{row['caption_group']}",
            )
    truth = {k: {"key": k, **truth[k]} if k in truth else derived[k] for k in keys}
    copies = duplication(keys, truth)
    for k in keys:  # derived rows get the sample data's kind names, so code reading ``kind`` still works
        if truth[k].get("derived"):
            truth[k]["kind"] = DERIVED_KINDS[min(copies[k], 2)]
    unique = [i for i, k in enumerate(keys) if copies[k] == 0]
    rng = np.random.default_rng([seed, 7])
    n_hold = min(heldout, len(unique) // 2)
    hold = set(rng.choice(unique, size=n_hold, replace=False).tolist()) if n_hold else set()
    train = [i for i in range(len(keys)) if i not in hold]
    held = sorted(hold)
    arr = np.stack(images)
    return LabData(
        keys=[keys[i] for i in train],
        captions=[captions[i] for i in train],
        images=arr[train],
        heldout_keys=[keys[i] for i in held],
        heldout_captions=[captions[i] for i in held],
        heldout_images=arr[held] if held else None,
        rejections=rejections,
        ground_truth=truth,
        shards=paths,
        copies=copies,
    )


def tokenize_captions(tokenizer: Any, captions: list[str]) -> np.ndarray:
    """Token ids ``[N, 77]`` padded and truncated as SD v1 does (``padding="max_length"``)."""
    ids = tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True
    ).input_ids
    return np.asarray(ids, dtype=np.int64)
