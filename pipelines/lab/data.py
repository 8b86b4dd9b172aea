"""The lab model's training data: WebDataset shards in memory at the model's resolution.

The lab data sets are small (thousands of 64 px images), so every image is decoded once into a uint8
array and every caption tokenized once. ``ground_truth.jsonl`` next to the shards (written by
``copyguard sample-data``) says which samples are planted duplicates; without it, samples whose caption
occurs once count as unique. A few unique samples can be held out of training as the real images FID is
measured against; they are chosen with the seed, so a resumed or repeated run holds out the same ones.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from copyguard.curation.errors import UsageError
from copyguard.curation.fileops import expand_paths
from copyguard.curation.images import ImageDecodeError, to_rgb_array
from copyguard.curation.records import Rejection
from copyguard.curation.shards import iter_samples

__all__ = ["LabData", "load_ground_truth", "load_lab_data", "tokenize_captions"]

log = logging.getLogger(__name__)


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

    def __len__(self) -> int:
        return len(self.keys)

    def info(self) -> dict[str, Any]:
        """A JSON summary for the model card."""
        kinds = Counter(self.row(k)["kind"] for k in self.keys)
        return {
            "shards": len(self.shards),
            "train_samples": len(self.keys),
            "heldout_samples": len(self.heldout_keys),
            "rejected": dict(self.rejections),
            "kinds": dict(kinds),
            "ground_truth": bool(self.ground_truth),
        }

    def row(self, key: str) -> dict[str, Any]:
        """Ground-truth row of a key (``kind``, ``copies``, ``image_group``, ``caption_group``)."""
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


def _derive_ground_truth(keys: list[str], captions: list[str]) -> dict[str, dict[str, Any]]:
    """Without ground truth: a caption repeated c times marks a duplicated pair with ``copies`` = c."""
    counts = Counter(captions)
    groups: dict[str, str] = {}
    rows = {}
    for key, cap in zip(keys, captions, strict=True):
        group = groups.setdefault(cap, key)
        c = counts[cap]
        kind = "dup_pair" if c > 1 else "unique"
        rows[key] = {"key": key, "image_group": group, "caption_group": group, "kind": kind, "copies": c}
    return rows


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
    rejections: Counter = Counter()
    for rec in tqdm(iter_samples(paths), desc="read shards", unit="sample", leave=False):
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
    if not keys:
        raise UsageError(f"the shards matching {pattern!r} hold no usable sample")
    if rejections:
        log.warning("skipped %d rejected records: %s", sum(rejections.values()), dict(rejections))
    truth = load_ground_truth(paths)
    missing = [k for k in keys if k not in truth]
    if truth and missing:
        log.warning("%d samples missing from ground_truth.jsonl; derived from caption counts", len(missing))
    derived = _derive_ground_truth(keys, captions)
    truth = {k: truth.get(k, derived[k]) for k in keys}
    unique = [i for i, k in enumerate(keys) if truth[k]["kind"] == "unique"]
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
    )


def tokenize_captions(tokenizer: Any, captions: list[str]) -> np.ndarray:
    """Token ids ``[N, 77]`` padded and truncated as SD v1 does (``padding="max_length"``)."""
    ids = tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True
    ).input_ids
    return np.asarray(ids, dtype=np.int64)
