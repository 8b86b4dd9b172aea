"""Seeded synthetic data for measuring curation at scale: the same seed gives the same data.

- :func:`planted_descriptors`: SSCD-like 512-d unit descriptors around log-normal-popular centres, with
  planted copy pairs at cosine 0.76-0.98 (above the 0.75 copy threshold, so every planted pair is an edge);
  :func:`pair_codes` and :func:`pair_recall` score found edges against those pairs.
- :func:`synthetic_key` and :func:`synthetic_caption`: keys and pseudo-word captions for any index, so
  that samples of any count are made without holding them (distinct captions share almost no word pair);
  :func:`synthetic_samples` reads rows of saved descriptors as the curation job's embedded samples.
- :func:`planted_captions`: real captions plus planted near-duplicates (case, punctuation and word edits).

docs/benchmark-methods.md describes how the benchmarks use them.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from copyguard.common.runtime import progress_bar
from copyguard.pipelines.lab.sample_captions import (
    case_variants,
    load_caption_pool,
    punct_variants,
    word_variants,
)

__all__ = [
    "n_centres",
    "pair_codes",
    "pair_recall",
    "planted_captions",
    "planted_descriptors",
    "real_captions",
    "synthetic_caption",
    "synthetic_key",
    "synthetic_samples",
]

DIM = 512
PAIR_FRACTION = 0.05  # of the vectors are in planted pairs
COPY_COSINE = (0.76, 0.98)
CENTRE_WEIGHT = (0.2, 0.7)
CAPTION_PLANT_FRACTION = 0.25  # of planted_captions' captions are planted near-duplicates
_CHUNK = 65_536
_SYLLABLES = ("ba", "ko", "mi", "ru", "te", "lo", "san", "vel", "dor", "pi", "zu", "ne", "fa", "gri", "hol",
              "ya")  # fmt: skip


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _random_unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    return _unit(rng.standard_normal((n, d), dtype=np.float32))


def n_centres(n: int) -> int:
    """Centres of :func:`planted_descriptors`: ``clip(4 * sqrt(n), 64, 4000)``."""
    return int(np.clip(round(4 * math.sqrt(n)), 64, 4000))


def planted_descriptors(
    n: int, seed: int = 0, d: int = DIM
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """``(x, pair_i, pair_j, info)``: ``n`` float32 unit rows of dimension ``d`` with planted copy pairs.

    Each row is ``a * centre + sqrt(1 - a^2) * g`` (``a ~ U(0.2, 0.7)``, ``g`` a random unit vector) around
    one of :func:`n_centres` random centres drawn with log-normal(0, 1) popularity; ``n / 40`` pairs
    ``(pair_i < pair_j)`` at random positions, the copy ``c * x + sqrt(1 - c^2) * h`` with ``h`` a unit
    vector orthogonal to ``x``, so the pair's cosine is exactly ``c ~ U(0.76, 0.98)``.
    """
    rng = np.random.default_rng(seed)
    k = n_centres(n)
    centres = _random_unit(rng, k, d)
    popularity = rng.lognormal(0.0, 1.0, k)
    assign = rng.choice(k, size=n, p=popularity / popularity.sum())
    x = np.empty((n, d), dtype=np.float32)
    for start in progress_bar(
        range(0, n, _CHUNK), desc="generate", unit="chunk", enabled=n >= 10 * _CHUNK, leave=False
    ):
        stop = min(n, start + _CHUNK)
        a = rng.uniform(*CENTRE_WEIGHT, stop - start).astype(np.float32)[:, None]
        g = _random_unit(rng, stop - start, d)
        x[start:stop] = _unit(a * centres[assign[start:stop]] + np.sqrt(1 - a * a) * g)
    pairs = int(n * PAIR_FRACTION / 2)
    chosen = rng.permutation(n)[: 2 * pairs]
    pi, pj = chosen[:pairs], chosen[pairs:]
    c = rng.uniform(*COPY_COSINE, pairs).astype(np.float32)[:, None]
    for start in range(0, pairs, _CHUNK):
        sl = slice(start, start + _CHUNK)
        base = x[pi[sl]]
        h = rng.standard_normal(base.shape, dtype=np.float32)
        h = _unit(h - (h * base).sum(1, keepdims=True) * base)  # orthogonal to the original
        x[pj[sl]] = _unit(c[sl] * base + np.sqrt(1 - c[sl] ** 2) * h)
    info = {
        "centres": k,
        "centre_popularity": "log-normal(0, 1)",
        "centre_weight": list(CENTRE_WEIGHT),
        "planted_pairs": pairs,
        "copy_cosine": list(COPY_COSINE),
        "seed": seed,
    }
    return x, np.minimum(pi, pj), np.maximum(pi, pj), info


def pair_codes(i: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    """One int64 per unordered pair of row indices below ``n``: ``min * n + max``."""
    i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
    return np.minimum(i, j) * n + np.maximum(i, j)


def pair_recall(found: np.ndarray, wanted: np.ndarray) -> float:
    """Fraction of the pair codes ``wanted`` present in ``found`` (1.0 when nothing is wanted)."""
    return float(np.isin(wanted, found).mean()) if len(wanted) else 1.0


def synthetic_key(i: int) -> str:
    return f"s{i:09d}"


def _word(code: int) -> str:
    return "".join(_SYLLABLES[(code >> (4 * k)) & 15] for k in range(3))


def synthetic_caption(i: int) -> str:
    """Six pseudo-words drawn from 4,096 by a hash of ``i``."""
    h = (i * 0x9E3779B97F4A7C15) & ((1 << 64) - 1)
    return " ".join(_word((h >> (12 * k)) & 0xFFF) for k in range(6))


def synthetic_samples(bounds: tuple[int, int], path: str) -> Iterator[Any]:
    """Rows ``start:stop`` of the ``.npy`` descriptors at ``path`` as the job's ``EmbeddedSample`` records
    (:func:`synthetic_key`, :func:`synthetic_caption`, 64x64): a Beam source reading a large file in chunks."""
    from copyguard.pipelines.transforms import EmbeddedSample

    start, stop = bounds
    block = np.array(np.load(path, mmap_mode="r")[start:stop])
    for i in range(start, stop):
        yield EmbeddedSample(
            synthetic_key(i), "synthetic.tar", synthetic_caption(i), 64, 64, block[i - start]
        )


def real_captions(csv_path: Path | None = None) -> tuple[list[str], list[str]]:
    """Distinct real captions and their sources: a ``;``-separated CSV's ``Caption`` column when the file
    exists (e.g. the COCO 2014 val prompts), then the shipped pool (COCO, LAION, memorized, templates)."""
    out: list[str] = []
    sources = []
    if csv_path is not None and csv_path.is_file():
        with open(csv_path, newline="", encoding="utf-8") as handle:
            out += [row["Caption"].strip() for row in csv.DictReader(handle, delimiter=";")]
        sources.append(str(csv_path))
    pool = load_caption_pool()
    for part in (pool.coco, pool.laion, pool.memorized, pool.templates):
        out += list(part)
    sources.append("pipelines/lab/assets/captions_*.txt")
    return list(dict.fromkeys(c for c in out if c)), sources


def planted_captions(
    total: int, csv_path: Path | None = None, seed: int = 0
) -> tuple[list[str], list[str], dict[str, Any]]:
    """``(keys, captions, info)``: ``total`` captions in a seeded random order, of which at least 25% are
    planted near-duplicates (1-3 re-casings, punctuation edits or one-word edits, the ``sample-data``
    caption edits) of seeded random :func:`real_captions`."""
    rng = np.random.default_rng(seed)
    real, sources = real_captions(csv_path)
    rng.shuffle(real)
    base = real[: min(len(real), max(1, int(round(total * (1 - CAPTION_PLANT_FRACTION)))))]
    planted: list[str] = []
    edits = (case_variants, punct_variants, word_variants)
    for index in rng.permutation(len(base)).tolist() * 3:  # until there are enough
        if len(base) + len(planted) >= total:
            break
        edit = edits[int(rng.integers(0, len(edits)))]
        planted += edit(base[index], int(rng.integers(1, 4)), rng)
    captions = (base + planted)[:total]
    captions = [captions[i] for i in rng.permutation(len(captions))]
    keys = [f"c{i:07d}" for i in range(len(captions))]
    info = {
        "sources": sources,
        "real": len(base),
        "planted": len(captions) - len(base),
        "total": len(captions),
    }
    return keys, captions, info
