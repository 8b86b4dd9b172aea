"""The evaluation library (copyguard.mitigation.evaluation): calibration, the generate-and-measure loop, evidence.

Pure functions are checked on hand-computed cases that a wrong implementation fails (ROC direction, the side
of the FPR calibration, the change metric on identical images, AMG term counts from a known trace); the
loop and the first-step calibration run on the tiny SD pipeline of ``tests/tiny_sd.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from copyguard.common.errors import UsageError
from copyguard.mitigation.evaluation import evidence as ev
from copyguard.mitigation.evaluation.calibrate import calibrate, calibrate_on_prompts, flagged_pct
from copyguard.mitigation.evaluation.measure import (
    OwnImages,
    first_of_groups,
    generate_chunked,
    generate_grid,
)

PROMPTS = ["a photo of a cat", "a red house", "a small blue tree"]


# ------------------------------------------------------------------------------------------- calibration
def test_calibration_flags_at_most_the_target_share_of_references() -> None:
    scores = np.arange(1.0, 101.0)  # 1 .. 100
    cal = calibrate(np.random.default_rng(0).permutation(scores), 0.01)
    assert cal.threshold == 99.0  # flag rule score > threshold: only 100 is flagged
    assert cal.flagged_pct(scores) == 1.0
    assert calibrate(scores, 0.05).threshold == 95.0 and calibrate(scores, 0.05).flagged_pct(scores) == 5.0
    assert cal.l_target() == pytest.approx(50.5) and cal.l_target(1.0) == 100.0
    assert cal.to_dict() == {
        "reference": "reference prompts",
        "reference_prompts": 100,
        "target_fpr": 0.01,
        "threshold": 99.0,
    }
    # too few references to resolve 1 %: the maximum, nothing flagged
    assert calibrate([3.0, 1.0, 2.0], 0.01).threshold == 3.0
    assert flagged_pct([1.0, 2.0, 3.0], 2.0) == pytest.approx(100 / 3)  # strictly above only
    assert flagged_pct([], 1.0) is None
    with pytest.raises(UsageError):
        calibrate([], 0.01)
    with pytest.raises(UsageError):
        cal.l_target(1.5)


def test_calibration_on_prompts_is_the_first_step_detector_score() -> None:
    from copyguard.mitigation.config import DetectConfig
    from copyguard.mitigation.detect import Detector, threshold_for_fpr
    from copyguard.mitigation.prompt_opt import calibrate_l_target
    from tests.tiny_sd import tiny_pipeline, torch_threads

    pipe = tiny_pipeline()
    cfg = DetectConfig(num_inference_steps=10, end=None, generations=3, target_fpr=0.25)
    with torch_threads(1):
        cal = calibrate_on_prompts(pipe, PROMPTS + ["a green dog"], cfg, reference="refs")
        first = Detector(pipe, cfg.model_copy(update={"end": 1, "generations": 1}), progress=False)
        scores = first.score(PROMPTS + ["a green dog"])
        l_target = calibrate_l_target(pipe, PROMPTS + ["a green dog"], detect_config=cfg)
    np.testing.assert_allclose(cal.reference_scores, scores)
    assert cal.threshold == threshold_for_fpr(scores, 0.25) and cal.target_fpr == 0.25
    assert cal.reference == "refs" and cal.l_target() == pytest.approx(l_target)
    with pytest.raises(UsageError):
        calibrate_on_prompts(pipe, [], cfg)


# --------------------------------------------------------------------------------------------- detection
def test_roc_summary_direction_and_counts() -> None:
    high, low = [3.0, 4.0, 5.0], [0.0, 1.0, 2.0, 2.5]
    r = ev.roc_summary(high, low)
    assert r["auc"] == 1.0 and r["tpr_at_1pct_fpr"] == 1.0
    assert (r["positives"], r["negatives"]) == (3, 4)
    assert r["mean_pos"] == 4.0 and r["mean_neg"] == pytest.approx(1.375)
    assert ev.roc_summary(low, high)["auc"] == 0.0  # higher scores mean memorized, never the reverse
    assert ev.roc_summary([1.0, 2.0], [1.5])["auc"] == 0.5


def test_detection_roc_scores_prompts_by_their_mean_magnitude() -> None:
    # 2 duplicated prompts (the first memorized) then 3 negatives; [prompts, generations, steps]
    first = np.array([5.0, 1.5, 1.0, 2.0, 0.5])[:, None, None]
    all_steps = np.stack([first[:, 0] * 0 + v for v in (1.0, 3.0)], axis=2)  # every prompt mean 2.0
    all_steps[0] = [[10.0, 0.0]]  # mean 5.0: highest
    out = ev.detection_roc({"first_step_n1": first, "all_steps_n1": all_steps}, 2, [True, False])
    s = out["first_step_n1"]
    assert s["memorized"]["auc"] == 1.0 and s["memorized"]["positives"] == 1
    assert s["all_duplicated"]["auc"] == pytest.approx(5 / 6)  # 5.0 beats all 3, 1.5 beats 1.0 and 0.5
    assert s["scores"] == {"duplicated": [5.0, 1.5], "memorized": [True, False], "unique": [1.0, 2.0, 0.5]}
    assert out["all_steps_n1"]["scores"]["duplicated"] == [5.0, 2.0]
    np.testing.assert_allclose(ev.prompt_scores(np.ones((2, 3, 4)) * [[[1.0]], [[3.0]]]), [1.0, 3.0])
    with pytest.raises(ValueError):
        ev.detection_roc({"x": first}, 2, [True])


def test_scores_by_copies_flags_and_aucs() -> None:
    out = ev.scores_by_copies([4.0, 6.0, 1.0], [25, 25, 2], [0.5, 1.5], [1.0, 2.0, 3.0], threshold=2.0)
    assert out["25"] == {"prompts": 2, "first_step_mean": 5.0, "flagged_pct": 100.0, "auc_vs_unique": 1.0}
    assert out["2"]["flagged_pct"] == 0.0 and out["2"]["auc_vs_unique"] == 0.5
    assert out["unique"] == {"prompts": 2, "first_step_mean": 1.0}
    assert out["heldout"] == {"prompts": 3, "first_step_mean": 2.0}


# ---------------------------------------------------------------------------------- images and tables
def test_image_change_is_zero_on_identical_images() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    emb = rng.normal(size=(4, 16))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    same = ev.image_change(a, a.copy(), emb, emb)
    assert same["identical_pct"] == 100.0 and same["pixel_mean_abs_change"] == 0.0
    assert same["pixel_max_abs_change"] == 0.0 and same["sscd_to_unmitigated_min"] == pytest.approx(1.0)
    b = a.copy()
    b[1, 0, 0, 0] = a[1, 0, 0, 0] ^ 0xFF  # one channel of one pixel of one image: |change| = 255 - 2v
    changed = ev.image_change(b, a, emb, emb)
    assert changed["identical_pct"] == 75.0 and ev.identical_pct(b, a) == 75.0
    assert changed["pixel_max_abs_change"] == abs(255 - 2 * int(a[1, 0, 0, 0]))
    assert changed["pixel_mean_abs_change"] == pytest.approx(changed["pixel_max_abs_change"] / a.size)
    assert ev.image_change(a, a, emb, -emb)["sscd_to_unmitigated_mean"] == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        ev.identical_pct(a, a[:2])


def test_memorization_summary_selects_generations() -> None:
    own = np.array([0.9, 0.6, 0.3, 0.45])
    mask = np.array([True, True, False, True])
    out = ev.memorization_summary(mask, own, None, np.array([1.0, 2.0, 3.0, 4.0]), threshold=0.4)
    assert out["generations"] == 3 and "sscd_train" not in out
    assert out["sscd_own"]["pct_gt_0.5"] == pytest.approx(200 / 3)
    assert out["sscd_own"]["pct_gt_0.4"] == 100.0 and out["sscd_own"]["top1"] == 0.9
    assert out["nl2"]["min"] == 1.0 and out["nl2"]["n"] == 3
    assert ev.memorization_summary(~np.ones(4, bool), own, own, None, 0.4) == {"generations": 0}


def _trace(flagged: bool, g_spe: list, g_dup: list, g_sim: list, sigma: list, y_n: list) -> dict:
    return {"flagged": flagged, "checked": [s is not None for s in sigma], "sigma": sigma, "g_spe": g_spe,
            "g_dup": g_dup, "g_sim": g_sim, "y_n": y_n}  # fmt: skip


def test_amg_term_stats_count_a_known_trace() -> None:
    t1 = _trace(
        True, [1, 1, 0, 1], [0, 1, 0, 0], [0, 0, 0, 1], [0.3, 0.5, None, 0.45], [None, "dup", None, None]
    )
    t2 = _trace(True, [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0.1, None, 0.2, None], [None] * 4)
    t3 = _trace(False, [0] * 4, [0] * 4, [0] * 4, [None] * 4, [None] * 4)  # the gate passed it by
    records = [{"amg": t1}, {"amg": t2}, {"amg": t3}, {"amg": None}, {"prompt": "no amg"}]
    s = ev.amg_term_stats(records)
    assert s["images"] == 3
    assert s["flagged_pct"] == pytest.approx(200 / 3) and s["guided_pct"] == pytest.approx(100 / 3)
    assert s["mean_steps_checked"] == 2.5  # (3 + 2) / 2 flagged images
    assert s["mean_steps_g_spe"] == 1.5 and s["mean_steps_g_dup"] == 0.5 and s["mean_steps_g_sim"] == 0.5
    assert s["mean_max_sigma"] == pytest.approx((0.5 + 0.2) / 2)
    assert s["with_y_n_pct"] == pytest.approx(100 / 3)
    assert ev.amg_term_stats([t1, t2, t3]) == s  # traces themselves are accepted
    assert ev.amg_term_stats([{"prompt": "x"}]) is None


def test_prompt_opt_share_and_relative_change() -> None:
    recs = [{"prompt_opt": {"reached_target": True}}, {"prompt_opt": {"reached_target": False}}, {}]
    assert ev.prompt_opt_reached_pct(recs) == 50.0 and ev.prompt_opt_reached_pct([{}]) is None
    assert ev.relative_change_pct(110.0, 100.0) == pytest.approx(10.0)
    assert ev.relative_change_pct(None, 100.0) is None and ev.relative_change_pct(1.0, None) is None


# ------------------------------------------------------------------------------------------------ measure
def test_first_of_groups_and_own_images() -> None:
    rows, names = first_of_groups(["g1", "g2", "g1", "g3", "g2"])
    assert (rows, names) == ([0, 1, 3], ["g1", "g2", "g3"])
    assert first_of_groups(["g1", "g2", "g1", "g3"], wanted={"g3", "g1"}) == ([0, 3], ["g1", "g3"])

    class Embedder:  # rows of the identity: image i embeds to e_{value of its first pixel}
        def embed(self, images: list) -> np.ndarray:
            return np.eye(4, dtype=np.float32)[[int(im[0, 0, 0]) for im in images]]

    images = np.zeros((4, 2, 2, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = [0, 1, 2, 3]
    own = OwnImages.build(Embedder(), images, ["a", "b", "a", "c"], wanted=["a", "b"])
    assert own.groups == ["a", "b"] and own.embeddings.shape == (2, 4)
    gen = np.eye(4, dtype=np.float32)[[0, 0, 1]]
    np.testing.assert_allclose(own(gen, ["a", "b", "b"]), [1.0, 0.0, 1.0])
    with pytest.raises(ValueError):
        own(gen[:1], ["c"])  # c was not wanted: no own image
    with pytest.raises(UsageError):
        OwnImages.build(Embedder(), images, ["a", "b", "a", "c"], wanted=["zzz"])


def test_generate_grid_is_prompt_major_and_matches_generate_images() -> None:
    from copyguard.mitigation.config import GenerateConfig
    from copyguard.mitigation.generate import generate_images
    from tests.tiny_sd import tiny_pipeline, torch_threads

    pipe = tiny_pipeline()
    cfg = GenerateConfig(num_inference_steps=2, batch_size=2)
    with torch_threads(1):
        g = generate_grid(pipe, cfg, PROMPTS, [7, 3])
        direct = {
            (m.prompt_index, m.seed): np.asarray(m.image.convert("RGB"))
            for m in generate_images(pipe, PROMPTS, cfg.model_copy(update={"seeds": [7, 3]}))
        }
        chunked = generate_chunked(pipe, cfg, PROMPTS, 5)
        alone = generate_grid(pipe, cfg, PROMPTS[2:], [6])
    assert g.images.shape == (6, 16, 16, 3) and g.images.dtype == np.uint8 and g.seconds > 0
    assert [(r["prompt_index"], r["seed"]) for r in g.records] == [
        (0, 7),
        (0, 3),
        (1, 7),
        (1, 3),
        (2, 7),
        (2, 3),
    ]
    for i, r in enumerate(g.records):
        np.testing.assert_array_equal(g.images[i], direct[(r["prompt_index"], r["seed"])])
    # one image per caption, chunk k of batch_size captions with seed 5 + k: the third caption is chunk 1
    assert [r["seed"] for r in chunked.records] == [5, 5, 6] and len(chunked.images) == 3
    np.testing.assert_allclose(chunked.images[2].astype(int), alone.images[0].astype(int), atol=1)
