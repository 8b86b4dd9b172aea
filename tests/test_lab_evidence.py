"""The detection and mitigation evidence (benchmarks/lab_mitigation.py) on the tiny lab model.

The same code that records the `small` figures in docs/mitigation.md, at tiny sizes: the training-set
index comes from the curation job on the tiny sample data, detection separates the memorized (25-copy)
prompt from the unique ones, the §6.4-shaped table has its rows, and AMG strong lowers the memorized
prompt's SSCD to its own training image. No timing is asserted.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

from copyguard.pipelines.lab.evidence import evidence_prompts, load_evidence_setup, reference_prompts

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmarks/ is a folder of scripts, not part of the installed package
    sys.path.insert(0, str(ROOT))
lab_mitigation = importlib.import_module("benchmarks.lab_mitigation")
render_mitigation = importlib.import_module("benchmarks.render.mitigation")

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

    spec = lab_mitigation.EvidenceSpec(
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
        return lab_mitigation.run_evidence(
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
    text = "\n".join(render_mitigation.render_evidence(evidence))
    for label in ("no mitigation", "GNI", "RNA", "AMG strong (gated)", "Top5%", "AUC memorized"):
        assert label in text


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
    merged = lab_mitigation.merge_results(main, [other])
    assert tuple(merged["mitigation"]["methods"]) == METHODS
    assert merged["merged_runs"][0]["methods"] == ["amg-strong"]
    bad = copy.deepcopy(other)
    bad["mitigation"]["methods"]["none"]["memorized"]["per_image"][0] += 0.1
    with pytest.raises(UsageError, match="differ"):
        lab_mitigation.merge_results(copy.deepcopy(evidence), [bad])


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
    spec = lab_mitigation.EvidenceSpec(steps=3, detect_generations=2, target_fpr=0.2)
    with torch_threads(1):
        out = lab_mitigation.detection_evidence(tiny_pipeline(), prompts, spec)
    assert list(out["settings"]) == ["first_step_n1", "first_step_n2", "all_steps_n1"]
    first = out["settings"]["first_step_n1"]
    assert first["memorized"]["positives"] == 1 and first["all_duplicated"]["negatives"] == 6
    assert len(first["scores"]["unique"]) == 6 and first["scores"]["memorized"] == [True, False]
    cal = out["calibration"]
    assert cal["reference"].startswith("unique training captions") and cal["reference_prompts"] == 6
    assert cal["flagged_unique_train_pct"] == cal["flagged_heldout_pct"] <= 20.0  # the same prompts
    assert cal["l_target_median"] == pytest.approx(np.median(first["scores"]["unique"]), abs=1e-4)
    assert set(out["by_copies_first_step_n1"]) == {"25", "2", "unique", "heldout"}
    only = lab_mitigation.detection_evidence(
        tiny_pipeline(), prompts, spec.__class__(steps=3, calibration_only=True)
    )
    assert set(only) == {"calibration"} and only["calibration"]["reference_prompts"] == 6
