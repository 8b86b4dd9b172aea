"""Memorization metrics (Chen et al., CVPR 2024; Somepalli et al., NeurIPS 2023) and FID on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from copyguard.mitigation.metrics import (
    InceptionFeatures,
    fid_from_features,
    frechet_distance,
    max_cosine,
    max_cosine_to_groups,
    pixel_nl2,
    summarize_nl2,
    summarize_similarity,
)


def test_max_cosine_and_groups() -> None:
    ref = np.eye(3, dtype=np.float32)
    gen = np.array([[0.6, 0.8, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    sims, idx = max_cosine(gen, ref)
    assert np.allclose(sims, [0.8, 1.0]) and list(idx) == [1, 2]
    assert np.allclose(max_cosine_to_groups(gen, ref, ["a", "b"], ["a", "a", "b"]), [0.8, 1.0])


def test_similarity_and_nl2_summaries() -> None:
    s = summarize_similarity(np.array([0.1, 0.45, 0.6, 0.9]))
    assert s["top1"] == 0.9 and s["pct_gt_0.5"] == 50.0 and s["pct_gt_0.4"] == 75.0
    v = summarize_nl2(np.array([1.3, 1.5, 2.0, 2.5]))
    assert v["min"] == 1.3 and v["pct_lt_1.4"] == 25.0 and v["pct_lt_1.6"] == 50.0


def test_pixel_nl2_of_an_exact_copy_is_zero() -> None:
    rng = np.random.default_rng(0)
    train = rng.integers(0, 255, size=(10, 4, 4, 3), dtype=np.uint8)
    nl2, nearest = pixel_nl2(train[[3]], train, k=5)
    assert nl2[0] == pytest.approx(0.0, abs=1e-9) and nearest[0] == 3


def test_frechet_distance_closed_forms() -> None:
    cov = np.diag([1.0, 2.0])
    assert frechet_distance(np.zeros(2), cov, np.zeros(2), cov) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(np.zeros(2), cov, np.array([3.0, 4.0]), cov) == pytest.approx(25.0)
    # 1-D: (s1 - s2)^2 for variances s1^2, s2^2
    assert frechet_distance(np.zeros(1), np.array([[4.0]]), np.zeros(1), np.array([[1.0]])) == pytest.approx(
        1.0
    )
    rng = np.random.default_rng(1)
    a = rng.normal(size=(200, 3))
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-6)
    assert fid_from_features(a, a + 2.0) == pytest.approx(12.0, rel=1e-6)


def test_inception_features_load_offline() -> None:
    feats = InceptionFeatures(batch_size=2)
    rng = np.random.default_rng(0)
    out = feats(rng.integers(0, 255, size=(2, 32, 32, 3), dtype=np.uint8))
    assert out.shape == (2, 2048) and np.isfinite(out).all()
