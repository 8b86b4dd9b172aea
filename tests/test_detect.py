"""Detector (Wen et al., ICLR 2024): first- and multi-step scores, batching, seeds, calibration, ROC."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from copyguard.common.config import load_config
from copyguard.common.errors import ConfigError, UsageError
from copyguard.mitigation.config import DetectConfig
from copyguard.mitigation.detect import Detector, roc_metrics, threshold_for_fpr, tpr_at_fpr
from copyguard.mitigation.magnitude import initial_latents, text_conditional_magnitude
from copyguard.mitigation.prompts import encode_prompts
from tests.tiny_sd import cached_trigger_pipeline, tiny_pipeline

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["a red house", "the cat on a tree", "a photo of the big city at night", "blue sky", "an old man"]


pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def _det(pipe, **kw) -> Detector:
    return Detector(pipe, DetectConfig(**kw), progress=False)


def test_shipped_yaml_equals_defaults_and_validation() -> None:
    assert load_config(DetectConfig, "detect", ROOT / "configs" / "detect.yaml", []) == DetectConfig()
    cfg = load_config(DetectConfig, "detect", None, ["detect.end=null", "detect.num_inference_steps=10"])
    assert cfg.resolved_end == 10
    with pytest.raises(ConfigError, match="start < end"):
        load_config(DetectConfig, "detect", None, ["detect.start=1"])
    with pytest.raises(ConfigError, match="num_inference_steps"):
        load_config(DetectConfig, "detect", None, ["detect.end=60"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(DetectConfig, "detect", None, ["detect.stepz=1"])


@torch.no_grad()
def test_first_step_score_is_one_magnitude_at_x_T(pipe) -> None:
    scores = _det(pipe).score(PROMPTS[:2])
    emb = encode_prompts(pipe, [*PROMPTS[:2], ""])
    pipe.scheduler.set_timesteps(50)
    x = initial_latents(0, (4, 8, 8)).expand(2, -1, -1, -1)
    manual = text_conditional_magnitude(pipe.unet, x, pipe.scheduler.timesteps[0], emb[:2], emb[2:])
    np.testing.assert_allclose(scores, manual.numpy(), rtol=1e-5)


def test_batching_gives_the_same_scores(pipe) -> None:
    one = _det(pipe, batch_size=1, end=3).score(PROMPTS)
    many = _det(pipe, batch_size=4, end=3).score(PROMPTS)
    np.testing.assert_allclose(one, many, rtol=1e-5)
    assert len(set(np.round(one, 6))) == len(PROMPTS)


def test_multi_step_window_and_generations(pipe) -> None:
    full = _det(pipe, end=4, generations=2, num_inference_steps=10).magnitudes(PROMPTS[:3])
    assert full.shape == (3, 2, 4)
    # the first-step column is the first-step detector; steps differ from each other
    np.testing.assert_allclose(
        full[:, 0, 0], _det(pipe, num_inference_steps=10).score(PROMPTS[:3]), rtol=1e-5
    )
    assert np.ptp(full[0, 0]) > 1e-3
    # the score is the mean over steps and generations; a window [1, 4) is the matching columns
    np.testing.assert_allclose(
        _det(pipe, end=4, generations=2, num_inference_steps=10).score(PROMPTS[:3]),
        full.mean(axis=(1, 2)),
        rtol=1e-6,
    )
    window = _det(pipe, start=1, end=4, generations=2, num_inference_steps=10).magnitudes(PROMPTS[:3])
    np.testing.assert_allclose(window, full[:, :, 1:], rtol=1e-5)
    # generation j is seed + j: generation 1 alone equals seed 1
    np.testing.assert_allclose(
        _det(pipe, end=4, seed=1, num_inference_steps=10).magnitudes(PROMPTS[:3])[:, 0], full[:, 1], rtol=1e-5
    )


def test_no_prompts_no_scores(pipe) -> None:
    assert _det(pipe).score([]) == []
    assert _det(pipe, end=3, generations=2).magnitudes([]).shape == (0, 2, 3)
    with pytest.raises(UsageError, match="^calibration needs at least one reference prompt$"):
        _det(pipe).calibrate([], target_fpr=0.1)


def test_deterministic_for_a_seed(pipe) -> None:
    a = _det(pipe, end=2, num_inference_steps=5).score(PROMPTS)
    b = _det(pipe, end=2, num_inference_steps=5).score(PROMPTS)
    c = _det(pipe, end=2, num_inference_steps=5, seed=7).score(PROMPTS)
    assert a == b
    assert not np.allclose(a, c)


def test_threshold_for_fpr_order_statistic() -> None:
    scores = np.arange(100.0)
    assert threshold_for_fpr(scores, 0.01) == 98.0
    assert int((scores > threshold_for_fpr(scores, 0.01)).sum()) == 1
    assert int((scores > threshold_for_fpr(scores, 0.05)).sum()) == 5
    assert int((scores > threshold_for_fpr(scores[::-1], 0.10)).sum()) == 10
    assert threshold_for_fpr(np.arange(50.0), 0.01) == 49.0  # cannot resolve 1%: nothing flagged
    assert threshold_for_fpr([1.0, 2.0, 2.0, 2.0], 0.25) == 2.0  # ties: FPR 0 <= target
    with pytest.raises(UsageError, match="at least one reference prompt"):
        threshold_for_fpr([], 0.01)
    with pytest.raises(UsageError, match="^calibration scores contain NaN or infinity$"):
        threshold_for_fpr([1.0, float("nan")], 0.01)
    with pytest.raises(UsageError, match=r"target FPR must lie in \(0, 1\), got 1.0"):
        threshold_for_fpr([1.0, 2.0], 1.0)


def test_calibrate_and_flag(pipe) -> None:
    words = ["cat", "dog", "house", "tree", "city", "street", "river", "mountain", "sky", "man"]
    refs = [f"a photo of the {w}" for w in words]
    det = _det(pipe)
    with pytest.raises(UsageError, match="threshold"):
        det.flag([1.0])
    thr = det.calibrate(refs, target_fpr=0.1)
    assert det.threshold == thr
    assert sum(det.flag(det.score(refs))) == 1  # 10% of 10 reference prompts


def test_roc_hand_computed() -> None:
    m = roc_metrics([3.0, 4.0, 5.0], [1.0, 2.0, 3.5])
    assert m["auc"] == pytest.approx(8 / 9)  # 8 of 9 (pos, neg) pairs ordered correctly
    assert m["tpr_at_1pct_fpr"] == pytest.approx(2 / 3)  # threshold above 3.5 keeps 4 and 5
    assert m["fpr"][0] == 0 and m["tpr"][-1] == 1 and len(m["thresholds"]) == len(m["fpr"])
    # 100 negatives: at 1% FPR exactly one negative (99) may lie above the threshold
    neg = np.arange(100.0)
    m = roc_metrics([99.5, 98.5, 50.0], neg)
    assert m["tpr_at_1pct_fpr"] == pytest.approx(2 / 3)
    assert tpr_at_fpr(m["fpr"], m["tpr"], 0.0) == pytest.approx(1 / 3)
    assert roc_metrics([2.0, 3.0], [0.0, 1.0]) | {"fpr": 0, "tpr": 0, "thresholds": 0} == {
        "auc": 1.0,
        "tpr_at_1pct_fpr": 1.0,
        "fpr": 0,
        "tpr": 0,
        "thresholds": 0,
    }
    with pytest.raises(UsageError):
        roc_metrics([], [1.0])


def test_separates_trigger_prompts_on_a_toy_memorizing_model() -> None:
    pipe = cached_trigger_pipeline()
    pos = [
        "a red trigger house",
        "trigger",
        "the old man with a trigger dog",
        "trigger mountain in the night",
    ]
    neg = [
        "a red house",
        "a small cat",
        "the old man with a dog",
        "mountain in the night",
        "blue sky",
        "a photo of the city",
    ]
    det = _det(pipe)
    m = roc_metrics(det.score(pos), det.score(neg))
    assert m["auc"] == 1.0 and m["tpr_at_1pct_fpr"] == 1.0
    det.calibrate(neg, target_fpr=0.2)
    assert det.flag(det.score(pos)) == [True] * 4


def test_scores_in_the_unets_dtype(pipe) -> None:
    """The prompt embeddings and x_T follow the UNet's dtype: with a float64 UNet beside a float32 text
    encoder the detector casts the embeddings and draws x_T in float64 (left in float32 they make the UNet
    fail), and the score is the magnitude computed by hand in float64."""
    pipe64 = copy.deepcopy(pipe)
    pipe64.unet.to(torch.float64)
    det = _det(pipe64)
    assert det.dtype == torch.float64
    (score,) = det.score(PROMPTS[:1])
    with torch.no_grad():
        emb = encode_prompts(pipe64, [PROMPTS[0], ""]).double()
        pipe64.scheduler.set_timesteps(50)
        x = initial_latents(0, (4, 8, 8), dtype=torch.float64)
        manual = text_conditional_magnitude(pipe64.unet, x, pipe64.scheduler.timesteps[0], emb[:1], emb[1:])
    assert score == pytest.approx(float(manual[0]), rel=1e-6)


def test_unresolvable_fpr_is_warned_and_roc_rejects_bad_scores(caplog) -> None:
    with caplog.at_level("WARNING", logger="copyguard.mitigation.detect"):
        threshold_for_fpr(np.arange(100.0), 0.01)  # k = 1: resolvable, no warning
    assert caplog.text == ""
    with caplog.at_level("WARNING", logger="copyguard.mitigation.detect"):
        threshold_for_fpr(np.arange(50.0), 0.01)
    assert "50 reference scores cannot resolve FPR 0.01" in caplog.text
    with pytest.raises(UsageError, match="^ROC scores contain NaN or infinity$"):
        roc_metrics([1.0, float("inf")], [0.5])
    with pytest.raises(UsageError, match="^ROC needs positive and negative scores, got 1 and 0$"):
        roc_metrics([1.0], [])
