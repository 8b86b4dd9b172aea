"""What the detection and mitigation evidence runs on a lab model: the model, its data, its index, its prompts.

The evidence (``benchmarks/lab_mitigation.py``, copyguard's evaluation protocol) needs the model's own training shards:
:func:`load_evidence_setup` refuses shards whose held-out keys or duplicated groups differ from the model's
``lab_training.json`` / ``memorization.json``. :func:`evidence_prompts` splits the ground truth into the prompt
sets of the evidence, and :func:`reference_prompts` picks the prompts known not to be memorized, on which
thresholds are calibrated (:mod:`copyguard.mitigation.evaluation.calibrate`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from copyguard.common.errors import UsageError
from copyguard.pipelines.lab.data import LabData
from copyguard.pipelines.lab.evaluate import MAGNITUDE_MIN_COPIES, EvalPrompt, select_prompts

__all__ = ["evidence_prompts", "load_evidence_setup", "reference_prompts"]


def load_evidence_setup(
    model: str | Path, data: str, index_dir: str | Path
) -> tuple[Any, LabData, Any, dict[str, Any]]:
    """The AMG pipeline, the model's training data (with its held-out split), the training index and the
    model's ``lab_training.json``.

    Raises :class:`UsageError` when ``data`` is not the model's training set (other held-out keys, or other
    duplicated groups than the model's own measurement used).
    """
    from copyguard.curation.index_shards import load_index
    from copyguard.mitigation.pipeline_amg import StableDiffusionAMGPipeline
    from copyguard.mitigation.sd_loader import load_sd_pipeline
    from copyguard.pipelines.lab.data import load_lab_data

    info_path = Path(model) / "lab_training.json"
    if not info_path.is_file():
        raise UsageError(f"{model} has no lab_training.json: not a copyguard lab model")
    info = json.loads(info_path.read_text())
    pipe = load_sd_pipeline(model, "cpu", pipeline_cls=StableDiffusionAMGPipeline)
    res = int(pipe.unet.config.sample_size * pipe.vae_scale_factor)
    held = list(info.get("heldout_keys", []))
    lab = load_lab_data(data, res, len(held), int(info.get("seed", 0)))
    measured = Path(model) / "memorization.json"
    groups_ok = True
    if measured.is_file():  # the duplicated groups the model's own measurement used must be these shards'
        gens = json.loads(measured.read_text()).get("generations", [])
        theirs = {str(g["group"]) for g in gens if int(g.get("copies", 1)) > 1}
        mine = {str(lab.row(k)["image_group"]) for k in lab.keys if lab.copies.get(k, 1) > 1}
        groups_ok = not theirs or theirs == mine
    if sorted(lab.heldout_keys) != sorted(held) or not groups_ok:
        raise UsageError(
            f"{data} is not the data {model} was trained on: its held-out keys or duplicated groups differ from "
            "lab_training.json / memorization.json "
            "(regenerate it with `copyguard sample-data` at the model's preset and seed)"
        )
    return pipe, lab, load_index(str(index_dir)), info


def evidence_prompts(
    lab: LabData,
    unique_prompts: int,
    seed: int = 0,
    min_copies: int = MAGNITUDE_MIN_COPIES,
    negatives: int | None = None,
) -> dict[str, list[EvalPrompt]]:
    """``memorized`` (>= ``min_copies``), ``duplicated`` (every planted pair), ``unique_eval`` (the lab
    measurement's seeded choice of ``unique_prompts``), ``unique_all`` (every unique training caption, or a
    seeded choice of ``negatives`` of them) and ``heldout`` captions (copies 0)."""
    chosen = select_prompts(lab, unique_prompts, seed)
    dups = [p for p in chosen if p.copies > 1]
    unique_all = [
        EvalPrompt(c, str(lab.row(k)["image_group"]), 1)
        for k, c in zip(lab.keys, lab.captions, strict=True)
        if lab.is_unique(k)
    ]
    if negatives is not None:
        rng = np.random.default_rng([seed, 17])
        pick = rng.choice(len(unique_all), size=min(negatives, len(unique_all)), replace=False)
        unique_all = [unique_all[i] for i in sorted(pick)]
    return {
        "memorized": [p for p in dups if p.copies >= min_copies],
        "duplicated": dups,
        "unique_eval": [p for p in chosen if p.copies <= 1],
        "unique_all": unique_all,
        "heldout": [EvalPrompt(c, k, 0) for k, c in zip(lab.heldout_keys, lab.heldout_captions, strict=True)],
    }


def reference_prompts(prompts: dict[str, list[EvalPrompt]]) -> tuple[list[str], str]:
    """Prompts known not to be memorized, for calibration, and their description: the held-out captions
    (never trained on), or, for a model without a held-out split (the tiny preset), the unique training
    captions."""
    if len(prompts["heldout"]) >= 10:
        return [p.caption for p in prompts["heldout"]], "held-out captions (never trained on)"
    return [p.caption for p in prompts["unique_all"]], "unique training captions (no held-out split)"
