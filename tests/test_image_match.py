"""The matching interface between embedding and the image search (curation/image_match.py)."""

from __future__ import annotations

import numpy as np
import pytest

from copyguard.curation.config import ImagesConfig
from copyguard.curation.embedders import l2_normalize
from copyguard.curation.image_match import (
    background_size,
    candidate_floor,
    descriptor_stats,
    edge_scores,
    stats_width,
)


def _unit(n: int, d: int = 256, seed: int = 0) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).normal(size=(n, d)))


def test_default_is_the_raw_cosine_at_the_threshold() -> None:
    cfg = ImagesConfig()
    assert stats_width(cfg) == 0 and background_size(cfg) == 0
    assert candidate_floor(cfg) == cfg.threshold
    stats = descriptor_stats(_unit(5), None, cfg)
    assert stats.shape == (5, 0) and stats.dtype == np.float32
    cos = np.array([0.1, 0.75, 0.9], np.float32)
    np.testing.assert_array_equal(edge_scores(cos, stats[:3], stats[:3], cfg), cos)


def test_score_norm_penalizes_images_that_resemble_the_background() -> None:
    cfg = ImagesConfig(score_norm=True, norm_k=3, norm_beta=1.0, norm_offset=0.3, threshold=0.5,
                       join_threshold=0.6)  # fmt: skip
    background = _unit(50, seed=1)
    generic = l2_normalize(background[:3].mean(0, keepdims=True))  # close to three background images
    distinct = _unit(1, seed=2)
    stats = descriptor_stats(np.concatenate([generic, distinct]), background, cfg)
    assert stats.shape == (2, 1)
    assert stats[0, 0] > stats[1, 0] + 0.3
    scores = edge_scores(np.array([0.8, 0.8], np.float32), stats[[0, 1]], stats[[1, 1]], cfg)
    assert scores[0] < scores[1]  # the same cosine counts less for a generic image
    # No score exceeds cos + offset, so the floor is a true lower bound for candidates.
    assert candidate_floor(cfg) == pytest.approx(0.2)
    assert (scores <= 0.8 + cfg.norm_offset + 1e-6).all()


def test_score_norm_skips_the_descriptor_itself_in_the_background() -> None:
    cfg = ImagesConfig(score_norm=True, norm_k=1)
    desc = _unit(4)
    stats = descriptor_stats(desc, desc, cfg)  # each one's nearest other row, never itself
    sims = desc @ desc.T
    np.fill_diagonal(sims, -1)
    np.testing.assert_allclose(stats[:, 0], np.clip(sims.max(1), 0, 1), atol=1e-6)
    with pytest.raises(ValueError, match="background"):
        descriptor_stats(desc, None, cfg)
