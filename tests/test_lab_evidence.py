"""The lab's evidence modules: detection and mitigation evidence (``copyguard.pipelines.lab.mitigation_evidence``,
``mitigation_measure``) on the tiny lab model, the result files (``results``), the sample-data check
(``sample_check``) and the image-matching harness (``image_match_eval``) on synthetic inputs.

The same code that records the `small` figures in docs/mitigation.md, at tiny sizes: the training-set
index comes from the curation job on the tiny sample data, detection separates the memorized (25-copy)
prompt from the unique ones, the table shaped like Chen et al.'s SD v1.4 results has its rows, and AMG
strong lowers the memorized prompt's SSCD to its own training image. No timing is asserted.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

from copyguard.pipelines.lab import mitigation_evidence, mitigation_measure
from copyguard.pipelines.lab.evidence import evidence_prompts, load_evidence_setup, reference_prompts

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmarks/ is a folder of scripts, not part of the installed package
    sys.path.insert(0, str(ROOT))
render = importlib.import_module("benchmarks.render")

METHODS = ("none", "gni", "rna", "amg-strong")


@pytest.fixture(scope="module")
def tiny_index(lab_tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``copyguard curate`` on the tiny sample data (SSCD embedder): OUT/index."""
    from copyguard.pipelines.curate import run as curate

    out = tmp_path_factory.mktemp("curated")
    curate(["--input", str(lab_tiny_data / "*.tar"), "--output", str(out), "--overwrite"])
    return out / "index"


@pytest.fixture(scope="module")
def evidence(lab_tiny_model: Path, lab_tiny_data: Path, tiny_index: Path) -> dict:
    from tests.tiny_sd import torch_threads

    spec = mitigation_measure.EvidenceSpec(
        seeds=2,
        unique_prompts=3,
        unique_seeds=1,
        fid_images=0,
        steps=10,
        detect_generations=2,
        detect_negatives=40,
        batch_size=4,
    )
    with torch_threads(1):
        return mitigation_evidence.run_evidence(
            lab_tiny_model,
            str(lab_tiny_data / "*.tar"),
            tiny_index,
            spec,
            "test",
            METHODS,
            fid=False,
            argv=[],
        )


def test_detection_separates_memorized_from_unique(evidence: dict) -> None:
    settings = evidence["detection"]["settings"]
    assert set(settings) == {"first_step_n1", "first_step_n2", "all_steps_n1"}
    first = settings["first_step_n1"]["memorized"]
    assert first["positives"] >= 1 and first["negatives"] == 40
    # tiny memorizes its 25-copy pair (first-step magnitude ~4x the unique prompts'): AUC 1.0 when built
    assert first["auc"] >= 0.9
    assert settings["all_steps_n1"]["memorized"]["auc"] >= 0.9
    assert first["mean_pos"] > 2 * first["mean_neg"]
    cal = evidence["detection"]["calibration"]
    assert cal["reference"].startswith("unique training captions")  # tiny has no held-out split
    assert cal["flagged_unique_train_pct"] <= 5.0


def test_mitigation_table_has_expected_rows(evidence: dict) -> None:
    rows = evidence["mitigation"]["methods"]
    assert tuple(rows) == METHODS
    for row in rows.values():
        mem = row["memorized"]
        assert mem["n"] == 2 * len(evidence["mitigation"]["memorized_prompts"])
        assert {"top5pct", "top1", "pct_gt_0.5", "pct_gt_0.4", "mean"} <= set(mem)
        assert "unique" in row
    assert "change" not in rows["none"]["memorized"]
    assert rows["gni"]["unique"]["change"]["identical_pct"] == 0.0  # GNI perturbs every prompt
    amg = rows["amg-strong"]["memorized"]["amg"]
    assert amg["flagged_pct"] == 100.0 and amg["guided_pct"] == 100.0
    text = render.render_page("mitigation", {"lab_mitigation": {"tiny": evidence}}, "tiny")
    for label in ("no mitigation", "GNI", "RNA", "AMG strong (gated)", "Top5%", "AUC memorized"):
        assert label in text
    none = rows["none"]["memorized"]
    assert (
        f"| no mitigation | {none['top5pct']:.3f} | {none['top1']:.3f} | {none['pct_gt_0.5']:.1f} |" in text
    )
    assert "{" not in text and "## Costs" not in text  # every field filled; no mitigation.json here


def test_amg_strong_lowers_memorized_similarity(evidence: dict) -> None:
    rows = evidence["mitigation"]["methods"]
    none = np.mean(rows["none"]["memorized"]["per_image"])
    strong = np.mean(rows["amg-strong"]["memorized"]["per_image"])
    assert strong < none - 0.02
    # the gate leaves unflagged unique prompts bit-identical
    uni = rows["amg-strong"]["unique"]
    if uni["amg"]["flagged_pct"] == 0.0:
        assert uni["change"]["identical_pct"] == 100.0


def test_merge_adds_methods_and_refuses_other_runs(evidence: dict) -> None:
    import copy

    from copyguard.common.errors import UsageError

    main = copy.deepcopy(evidence)
    other = copy.deepcopy(evidence)
    del main["mitigation"]["methods"]["amg-strong"]
    other["mitigation"]["methods"] = {k: other["mitigation"]["methods"][k] for k in ("none", "amg-strong")}
    merged = mitigation_evidence.merge_results(main, [other])
    assert tuple(merged["mitigation"]["methods"]) == METHODS
    assert merged["merged_runs"][0]["methods"] == ["amg-strong"]
    bad = copy.deepcopy(other)
    bad["mitigation"]["methods"]["none"]["memorized"]["per_image"][0] += 0.1
    with pytest.raises(UsageError, match="differ"):
        mitigation_evidence.merge_results(copy.deepcopy(evidence), [bad])


def test_wrong_data_is_refused(lab_tiny_model: Path, tmp_path: Path, tiny_index: Path) -> None:
    """Shards that are not the model's training data are refused with one line (held-out keys differ)."""
    from copyguard.common.errors import UsageError
    from copyguard.pipelines.lab.config import SampleDataConfig
    from copyguard.pipelines.lab.sample_data import build_sample_data

    build_sample_data(SampleDataConfig(preset="tiny", seed=5), tmp_path)
    with pytest.raises(UsageError):
        load_evidence_setup(lab_tiny_model, str(tmp_path / "*.tar"), tiny_index)
    with pytest.raises(UsageError, match="not a copyguard lab model"):
        load_evidence_setup(tmp_path, str(tmp_path / "*.tar"), tiny_index)


def test_evidence_prompts_split_the_ground_truth(
    lab_tiny_model: Path, lab_tiny_data: Path, tiny_index: Path
) -> None:
    """Memorized prompts are the >= 25-copy pairs; negatives are a seeded subset of the unique captions; a
    model without a held-out split calibrates on the unique training captions."""
    _, lab, _, _ = load_evidence_setup(lab_tiny_model, str(lab_tiny_data / "*.tar"), tiny_index)
    prompts = evidence_prompts(lab, 3, seed=0, min_copies=25, negatives=5)
    assert prompts["memorized"] and all(p.copies >= 25 for p in prompts["memorized"])
    assert set(prompts["memorized"]) <= set(prompts["duplicated"])
    assert all(p.copies > 1 for p in prompts["duplicated"]) and len(prompts["unique_eval"]) == 3
    assert len(prompts["unique_all"]) == 5 and all(p.copies == 1 for p in prompts["unique_all"])
    assert prompts["unique_all"] == evidence_prompts(lab, 3, seed=0, negatives=5)["unique_all"]  # seeded
    refs, name = reference_prompts(prompts)
    assert name.startswith("unique training captions") and refs == [p.caption for p in prompts["unique_all"]]


def test_detection_evidence_records_every_setting_on_any_pipeline() -> None:
    """The detection half runs on any SD pipeline (here the untrained tiny one): every setting's ROC, the
    gate calibrated on the reference prompts and the per-copy-count table, under the recorded JSON keys."""
    from copyguard.pipelines.lab.evaluate import EvalPrompt
    from tests.tiny_sd import tiny_pipeline, torch_threads

    dup = [EvalPrompt("a photo of a cat", "g1", 25), EvalPrompt("a red house", "g2", 2)]
    words = ("dog", "tree", "blue", "green", "small", "big")
    unique = [EvalPrompt(f"a photo of a {w}", f"u{i}", 1) for i, w in enumerate(words)]
    prompts = {
        "memorized": dup[:1],
        "duplicated": dup,
        "unique_eval": [],
        "unique_all": unique,
        "heldout": [],
    }
    spec = mitigation_measure.EvidenceSpec(steps=3, detect_generations=2, target_fpr=0.2)
    with torch_threads(1):
        out = mitigation_measure.detection_evidence(tiny_pipeline(), prompts, spec)
    assert list(out["settings"]) == ["first_step_n1", "first_step_n2", "all_steps_n1"]
    first = out["settings"]["first_step_n1"]
    assert first["memorized"]["positives"] == 1 and first["all_duplicated"]["negatives"] == 6
    assert len(first["scores"]["unique"]) == 6 and first["scores"]["memorized"] == [True, False]
    cal = out["calibration"]
    assert cal["reference"].startswith("unique training captions") and cal["reference_prompts"] == 6
    assert cal["flagged_unique_train_pct"] == cal["flagged_heldout_pct"] <= 20.0  # the same prompts
    assert cal["l_target_median"] == pytest.approx(np.median(first["scores"]["unique"]), abs=1e-4)
    assert set(out["by_copies_first_step_n1"]) == {"25", "2", "unique", "heldout"}
    only = mitigation_measure.detection_evidence(
        tiny_pipeline(), prompts, spec.__class__(steps=3, calibration_only=True)
    )
    assert set(only) == {"calibration"} and only["calibration"]["reference_prompts"] == 6


def test_merge_command_rewrites_the_result_file(evidence: dict, tmp_path: Path) -> None:
    """``python -m copyguard.pipelines.lab.mitigation_evidence merge`` on two written result files: the header
    of :mod:`copyguard.pipelines.lab.results`, MAIN rewritten in place with the other run's methods."""
    import copy
    import json

    from copyguard.pipelines.lab import results

    main = copy.deepcopy(evidence)
    other = copy.deepcopy(evidence)
    del main["mitigation"]["methods"]["amg-strong"]
    other["mitigation"]["methods"] = {k: other["mitigation"]["methods"][k] for k in ("none", "amg-strong")}
    main_path = results.write_result(main, tmp_path, "dev 2/cpu", "lab_mitigation")
    other_path = results.write_result(other, tmp_path / "other", "dev 2/cpu", "lab_mitigation")
    assert main_path == tmp_path / "dev-2-cpu" / "lab_mitigation.json"
    written = json.loads(main_path.read_text())
    assert written["benchmark"] == "lab_mitigation" and "_t0" not in written and written["wall_s"] >= 0
    assert written["command"] == f"python -m {mitigation_evidence.MODULE}"  # run_evidence(argv=[])
    assert written["machine"]["tag"] == "test" and "load_average_at_end" in written["machine"]
    assert mitigation_evidence.main(["merge", str(main_path), str(other_path)]) == 0
    merged = json.loads(main_path.read_text())
    assert tuple(merged["mitigation"]["methods"]) == METHODS
    assert merged["merged_runs"][0]["methods"] == ["amg-strong"] and "goals" in merged


def test_sample_check_reports_copies_and_near_misses() -> None:
    """The sample-data check's figures on four images: a planted crop at cosine 0.9 to its original, two
    unique images of different groups at 0.8 (the closest pair across groups)."""
    from copyguard.pipelines.lab.sample_check import caption_report, image_report

    keys = ["a", "a1", "b", "c"]
    truth = {
        "a": {"image_group": "a", "caption_group": "a", "kind": "unique"},
        "a1": {"image_group": "a", "caption_group": "a", "kind": "image_crop"},
        "b": {"image_group": "b", "caption_group": "b", "kind": "unique"},
        "c": {"image_group": "c", "caption_group": "c", "kind": "unique"},
    }
    emb = np.array([[1, 0, 0], [0.9, np.sqrt(0.19), 0], [0, 0, 1], [0, 0.6, 0.8]])
    rep = image_report(keys, truth, emb)
    assert rep["to_group_original"] == {"image_crop": pytest.approx({"n": 1, "min": 0.9, "p1": 0.9, "p5": 0.9,
                                        "median": 0.9, "p95": 0.9, "p99": 0.9, "max": 0.9})}  # fmt: skip
    assert rep["nearest_other_group"]["max"] == 0.8 and rep["nearest_other_group"]["min"] == 0.0
    assert rep["images_with_other_group_above"]["0.7"] == 2 and rep["pairs_across_groups_above"]["0.7"] == 1
    assert rep["top_pairs_across_groups"][0] == [0.8, "b", "unique", "c", "unique"]
    captions = ["a red barn under a blue sky", "a red barn under a blue sky today", "a photo of a dog on grass",
                "a photo of a dog on the grass"]  # fmt: skip
    cap = caption_report(keys, truth, captions)
    assert set(cap) == {"char5", "word2"}
    assert cap["word2"]["to_group_original"]["image_crop"]["n"] == 1
    assert cap["word2"]["top_pairs_across_groups"][0][1:] == captions[2:]
    assert 0.5 < cap["word2"]["max_across_groups"] < 1.0


def test_image_match_eval_scores_the_job_matching(lab_tiny_data: Path) -> None:
    """The harness clusters by the job's pair scores and scores the grouping against the ground truth."""
    from copyguard.curation.config import ImagesConfig
    from copyguard.pipelines.lab.image_match_eval import match_scores, read_folder, score

    emb = np.array([[1, 0, 0], [0.9, np.sqrt(0.19), 0], [0, 0, 1], [0, 0.6, 0.8]], dtype=np.float32)
    crop = {"image_group": "a", "kind": "image_crop", "size": 64}  # a planted group: original and its copy
    truth = [crop, crop, {"image_group": "b", "kind": "unique"}, {"image_group": "c", "kind": "unique"}]
    cfg = ImagesConfig()
    np.testing.assert_allclose(match_scores(emb, cfg), emb @ emb.T)
    out = score(match_scores(emb, cfg), truth, cfg)
    assert out["recall"] == {"crop": 1.0, "crop@64": 1.0} and out["per"]["crop"] == [1, 1]
    assert out["overall"]["recall"] == 1.0 and out["overall"]["precision"] == 0.5  # b and c merged at 0.8
    strict = ImagesConfig(threshold=0.95, join_threshold=0.95)
    assert score(match_scores(emb, strict), truth, strict)["recall"]["crop"] == 0.0
    plain = ImagesConfig(score_norm=True, norm_beta=0.0, norm_offset=0.0, norm_background=10)
    off = ~np.eye(4, dtype=bool)
    np.testing.assert_allclose(match_scores(emb, plain)[off], (emb @ emb.T)[off], atol=1e-6)
    normed = match_scores(emb, ImagesConfig(score_norm=True, norm_background=10))
    assert np.allclose(normed, normed.T) and not np.allclose(normed[off], (emb @ emb.T)[off])
    keys, blobs, rows = read_folder(lab_tiny_data)
    assert keys == sorted(keys) and len(blobs) == len(rows) == len(keys) > 0
    assert all(r["kind"].startswith(("image_", "unique")) for r in rows)
