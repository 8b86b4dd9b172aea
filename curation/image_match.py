"""How two SSCD descriptors are matched: the one interface between embedding and the image search.

The image search (exact, IVF or partitioned and distributed) calls these functions and nothing else:

- :func:`candidate_floor` ``(cfg) -> float``: the lowest *raw* cosine between two descriptors that could
  possibly become an edge. The search keeps every pair at or above it (its range-search radius) and hands
  them to :func:`edge_scores`.
- :func:`descriptor_stats` ``(desc, background, cfg) -> float32 [n, stats_width(cfg)]``: per-descriptor
  numbers computed at embed time, batch by batch, stored next to each descriptor and passed back to
  :func:`edge_scores`. ``background`` is a small fixed set of descriptors (:func:`background_size` rows;
  ``None`` when ``stats_width(cfg) == 0``), e.g. a random sample the job draws once with Beam's
  ``Sample.FixedSizeGlobally``, never a per-sample side input.
- :func:`edge_scores` ``(cos, stats_i, stats_j, cfg) -> float32 [m]``: the score each candidate pair is
  compared to ``cfg.threshold`` with (``>= threshold`` flags the pair; ``>= cfg.join_threshold`` lets a
  leftover singleton join a group).

Score normalization (``cfg.score_norm``; Pizzi et al., *A Self-Supervised Descriptor for Image Copy
Detection*, CVPR 2022, sec. 3.4, after Jégou et al.'s contextual dissimilarity): a descriptor's stat is the
mean cosine to its ``cfg.norm_k`` nearest background descriptors; a pair's score is its cosine minus
``cfg.norm_beta`` times the larger stat of its two ends, plus ``cfg.norm_offset`` so that a pair of typical
images keeps its cosine scale. Images that resemble everything (textures, flat colour) are penalized;
distinctive images keep their score. The stat is clipped to ``[0, 1]``, so no score exceeds
``cos + norm_offset`` and :func:`candidate_floor` is ``threshold - norm_offset``.

Without normalization: no stats (width 0), the score is the cosine itself and the floor is
``cfg.threshold``. Signatures are stable; new behaviour comes with new config fields.
"""

from __future__ import annotations

import numpy as np

from copyguard.curation.config import ImagesConfig

__all__ = [
    "background_size",
    "candidate_floor",
    "descriptor_stats",
    "edge_scores",
    "stats_width",
]


def stats_width(cfg: ImagesConfig) -> int:
    """Columns of :func:`descriptor_stats` under ``cfg`` (1 with score normalization, else 0)."""
    return 1 if cfg.score_norm else 0


def background_size(cfg: ImagesConfig) -> int:
    """How many background descriptors :func:`descriptor_stats` wants (0: none needed)."""
    return int(cfg.norm_background) if cfg.score_norm else 0


def candidate_floor(cfg: ImagesConfig) -> float:
    """Lowest raw cosine between two descriptors that :func:`edge_scores` could lift to ``cfg.threshold``."""
    if not cfg.score_norm:
        return float(cfg.threshold)
    return float(max(-1.0, cfg.threshold - cfg.norm_offset))


def descriptor_stats(desc: np.ndarray, background: np.ndarray | None, cfg: ImagesConfig) -> np.ndarray:
    """Per-descriptor float32 ``[n, stats_width(cfg)]``: the mean cosine to the ``norm_k`` nearest
    background descriptors (clipped to ``[0, 1]``) under score normalization, else no columns.

    A background row equal to the descriptor (cosine > 0.9999: the image itself was sampled into the
    background) is skipped, so sampling the background from the data does not bias its own members.
    """
    desc = np.asarray(desc, dtype=np.float32)
    width = stats_width(cfg)
    if width == 0:
        return np.zeros((desc.shape[0], 0), dtype=np.float32)
    if background is None or len(background) == 0:
        raise ValueError("score normalization needs a background set of descriptors")
    bg = np.asarray(background, dtype=np.float32)
    sims = desc @ bg.T
    sims[sims > 0.9999] = -1.0
    k = min(int(cfg.norm_k), bg.shape[0])
    top = -np.partition(-sims, k - 1, axis=1)[:, :k]
    return np.clip(top.mean(axis=1, keepdims=True), 0.0, 1.0).astype(np.float32)


def edge_scores(cos: np.ndarray, stats_i: np.ndarray, stats_j: np.ndarray, cfg: ImagesConfig) -> np.ndarray:
    """The score each candidate pair (raw cosine ``cos``, stats of both ends) is thresholded with."""
    cos = np.asarray(cos, dtype=np.float32).reshape(-1)
    if not cfg.score_norm:
        return cos
    si = np.asarray(stats_i, dtype=np.float32).reshape(len(cos), -1)[:, 0]
    sj = np.asarray(stats_j, dtype=np.float32).reshape(len(cos), -1)[:, 0]
    return (cos - cfg.norm_beta * np.maximum(si, sj) + cfg.norm_offset).astype(np.float32)
