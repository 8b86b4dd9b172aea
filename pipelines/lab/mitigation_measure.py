"""The measurements of the lab's detection and mitigation evidence: what each detection setting separates and
what each mitigation does to memorized and unique prompts.

- :func:`detection_evidence`: the text-conditional noise magnitude (Wen et al., ICLR 2024, Eq. 1) of every
  duplicated and unique training caption along the ordinary CFG trajectory; ROC per setting (first step
  with n = 1 and n generations, all steps) and the gate threshold calibrated at the target FPR on prompts
  known not to be memorized (:mod:`copyguard.mitigation.evaluation.calibrate`).
- :func:`mitigation_evidence`: per method (no mitigation, the inference-time baselines of Somepalli et al.,
  NeurIPS 2023, prompt-embedding optimization of Wen et al., ICLR 2024, Sec. 4, and detection-gated AMG of
  Chen et al., CVPR 2024), SSCD of the memorized prompts' generations to their own training image (Top5%,
  Top1, shares over 0.5 / 0.4), FID on held-out captions and each unique prompt's change from its
  unmitigated image. The generate-and-measure loop and the figures are
  :mod:`copyguard.mitigation.evaluation` (``measure`` and ``evidence``); this module only chooses the
  prompts, seeds and methods. :mod:`copyguard.pipelines.lab.mitigation_evidence` runs both and writes the
  result file.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from copyguard.common.fileops import atomic_write
from copyguard.mitigation.config import AMG_PRESETS, MITIGATIONS
from copyguard.pipelines.lab.evaluate import MAGNITUDE_MIN_COPIES, EvalPrompt
from copyguard.pipelines.lab.evidence import reference_prompts

__all__ = [
    "INT_ARGS",
    "LABELS",
    "METHODS",
    "EvidenceSpec",
    "detection_evidence",
    "fid_changes",
    "method_config",
    "mitigation_evidence",
]

log = logging.getLogger(__name__)
# The mitigations, AMG once per named preset ("amg-paper", ...); the baselines first, as in the tables.
METHODS = (
    *(m for m in MITIGATIONS if m not in ("prompt-opt", "amg")),
    "prompt-opt",
    *(f"amg-{p}" for p in AMG_PRESETS),
)
LABELS = {"none": "no mitigation", **{m: m.upper() for m in METHODS if m not in ("none", "prompt-opt")},
          "prompt-opt": "prompt-opt (Wen et al.)", **{f"amg-{p}": f"AMG {p} (gated)" for p in AMG_PRESETS},
          "amg-paper-ungated": "AMG paper (ungated)"}  # fmt: skip


# the integer options of the command line: (flag, default, help); each sets the EvidenceSpec field of its name
INT_ARGS = (
    ("--seeds", 4, "seeds per memorized prompt"),
    ("--unique-prompts", 50, "unique training captions measured for the change from unmitigated"),
    ("--unique-seeds", 1, "seeds per unique prompt"),
    ("--fid-images", 200, "held-out captions for FID (< 2: no FID)"),
    ("--steps", 25, "DDIM steps"),
    ("--ungated-unique", 0, "unique prompts through ungated AMG paper"),
    ("--detect-generations", 4, "n of the first-step n > 1 setting"),
    ("--check-every", 1, "AMG sigma check interval (steps)"),
)


@dataclass
class EvidenceSpec:
    """Sizes and sampling settings of one evidence run (defaults: the ``small`` lab model's measurement)."""

    seeds: int = 4
    unique_prompts: int = 50
    unique_seeds: int = 1
    fid_images: int = 200
    steps: int = 25
    guidance_scale: float = 7.5
    batch_size: int = 8
    detect_generations: int = 4  # first step with n generations (all steps: n = 1)
    detect_all_steps: bool = True
    calibration_only: bool = False  # detection: only the gate threshold (for a run merged into another)
    check_every: int = 1  # AMG's sigma check interval (1 = every step, as the paper)
    detect_negatives: int | None = None  # None: every unique training caption
    target_fpr: float = 0.01
    min_copies: int = MAGNITUDE_MIN_COPIES  # >= 25 copies: memorized by the small lab model
    ungated_unique: int = 0  # unique prompts also run through ungated AMG paper (0: skip)
    seed: int = 0


# ------------------------------------------------------------------------------------------ detection
def detect_config(spec: EvidenceSpec) -> Any:
    """The detection trajectory of the evidence: all steps, n = 1 (settings narrow it)."""
    from copyguard.mitigation.config import DetectConfig

    return DetectConfig(
        num_inference_steps=spec.steps, end=None, generations=1, seed=spec.seed,
        guidance_scale=spec.guidance_scale, batch_size=64, target_fpr=spec.target_fpr,
    )  # fmt: skip


def detection_evidence(pipe: Any, prompts: dict[str, list[EvalPrompt]], spec: EvidenceSpec) -> dict[str, Any]:
    """Detection ROC (Wen et al., ICLR 2024) at the first step with n = 1 and n = ``spec.detect_generations``
    generations and over all steps with n = 1, plus the threshold calibrated at ``spec.target_fpr`` on the
    reference prompts (:func:`~copyguard.pipelines.lab.evidence.reference_prompts`) and what it flags. One
    trajectory pass per prompt and seed gives every setting (the first step of the all-steps run is the
    first-step score: same seeds, deterministic DDIM). ``spec.calibration_only``: the calibration only."""
    from copyguard.mitigation.detect import Detector
    from copyguard.mitigation.evaluation.calibrate import calibrate_on_prompts, first_step_config
    from copyguard.mitigation.evaluation.evidence import detection_roc, scores_by_copies

    cfg = detect_config(spec)
    first_cfg = first_step_config(cfg)
    dup, neg = prompts["duplicated"], prompts["unique_all"]
    captions = [p.caption for p in dup] + [p.caption for p in neg]
    t0 = time.perf_counter()
    refs, ref_name = reference_prompts(prompts)
    cal = calibrate_on_prompts(pipe, refs, cfg, reference=ref_name)
    if spec.calibration_only:
        return {"calibration": {**cal.to_dict(), "l_target_median": cal.l_target()}}
    settings: dict[str, np.ndarray] = {}
    if spec.detect_all_steps:
        settings["all_steps_n1"] = Detector(pipe, cfg, progress=True).magnitudes(captions)  # [P, 1, steps]
        settings["first_step_n1"] = settings["all_steps_n1"][:, :, :1]  # same seed, same first step
    else:
        settings["first_step_n1"] = Detector(pipe, first_cfg, progress=False).magnitudes(captions)
    n = spec.detect_generations
    if n > 1:
        gcfg = first_cfg.model_copy(update={"generations": n})
        settings[f"first_step_n{n}"] = Detector(pipe, gcfg, progress=True).magnitudes(captions)
    settings = {
        k: settings[k] for k in ("first_step_n1", f"first_step_n{n}", "all_steps_n1") if k in settings
    }
    is_mem = np.array([p.copies >= spec.min_copies for p in dup])
    first = settings["first_step_n1"][:, 0, 0]
    f_dup, f_neg = first[: len(dup)], first[len(dup) :]
    return {
        "settings": detection_roc(settings, len(dup), is_mem),
        "seconds": round(time.perf_counter() - t0, 1),
        "steps": spec.steps,
        "calibration": {
            **cal.to_dict(),
            "l_target_median": cal.l_target(),
            "flagged_memorized_pct": cal.flagged_pct(f_dup[is_mem]),
            "flagged_duplicated_pct": cal.flagged_pct(f_dup),
            "flagged_unique_train_pct": cal.flagged_pct(f_neg),
            "flagged_heldout_pct": cal.flagged_pct(cal.reference_scores),
        },
        "by_copies_first_step_n1": scores_by_copies(
            f_dup, [p.copies for p in dup], f_neg, cal.reference_scores, cal.threshold
        ),
    }


# ----------------------------------------------------------------------------------------- mitigation
def method_config(name: str, spec: EvidenceSpec, gate: float | None, l_target: float | None) -> Any:
    """The :class:`GenerateConfig` of method ``name`` (AMG gated at ``gate``; prompt-opt at ``l_target``)."""
    from copyguard.mitigation.config import AMGConfig, GenerateConfig, PromptOptConfig

    base = {
        "num_inference_steps": spec.steps,
        "guidance_scale": spec.guidance_scale,
        "batch_size": spec.batch_size,
        "baseline_seed": spec.seed,
    }
    if name.startswith("amg-"):
        preset = name.split("-")[1]
        gated = not name.endswith("-ungated")
        amg = AMGConfig.preset(
            preset, "sscd", gated=gated, gate_threshold=gate if gated else None, check_every=spec.check_every
        )
        return GenerateConfig(mitigation="amg", amg=amg, **base)
    if name == "prompt-opt":
        return GenerateConfig(mitigation="prompt-opt", prompt_opt=PromptOptConfig(l_target=l_target), **base)
    return GenerateConfig(mitigation=name, **base)


def fid_changes(rows: dict[str, Any]) -> None:
    """Each method's FID change (%) against the unmitigated FID, in place."""
    from copyguard.mitigation.evaluation.evidence import relative_change_pct

    none_fid = (rows["none"].get("fid") or {}).get("fid")
    for row in rows.values():
        change = relative_change_pct((row.get("fid") or {}).get("fid"), none_fid)
        if change is not None:
            row["fid"]["change_pct"] = change


def mitigation_evidence(
    pipe: Any,
    lab: Any,
    index: Any,
    prompts: dict[str, list[EvalPrompt]],
    spec: EvidenceSpec,
    gate: float,
    methods: Sequence[str] = METHODS,
    fid: bool = True,
    progress: Callable[[str], None] | None = None,
    partial: str | Path | None = None,
    l_target: float | None = None,
) -> dict[str, Any]:
    """The mitigation table (shaped as Chen et al., CVPR 2024, Table 1): per method, SSCD figures of the
    memorized prompts' generations against their own training images, FID on held-out captions, and the
    unique prompts' change from unmitigated. AMG is gated at ``gate``; ``l_target``: prompt-opt's target
    (None: the median first-step magnitude of the reference prompts). ``partial``: a JSON file rewritten
    after each method, so that a crash late in a long run keeps the methods already measured."""
    from copyguard.curation.embedders import load_embedder
    from copyguard.mitigation.evaluation import evidence as ev
    from copyguard.mitigation.evaluation.calibrate import calibrate_on_prompts
    from copyguard.mitigation.evaluation.measure import OwnImages, generate_chunked, generate_grid
    from copyguard.mitigation.metrics import InceptionFeatures, fid_from_features, summarize_similarity

    say = progress or log.info
    embedder = load_embedder("sscd-onnx", threads=torch.get_num_threads())
    mem, uni = prompts["memorized"], prompts["unique_eval"]
    held = prompts["heldout"][: spec.fid_images]
    seeds = {"memorized": [spec.seed * 1000 + j for j in range(spec.seeds)]}
    seeds["unique"] = [spec.seed * 1000 + j for j in range(spec.unique_seeds)]
    train_groups = [str(lab.row(k)["image_group"]) for k in lab.keys]
    own = OwnImages.build(embedder, lab.images, train_groups, wanted=[p.group for p in mem + uni])
    if "prompt-opt" in methods and l_target is None:
        l_target = calibrate_on_prompts(pipe, reference_prompts(prompts)[0], detect_config(spec)).l_target()
    incep = InceptionFeatures() if fid and len(held) >= 2 else None
    real = incep(lab.heldout_images[: len(held)]) if incep is not None else None
    rows: dict[str, Any] = {}
    base: dict[str, Any] = {}

    def measure(name: str, cfg: Any, kind: str, chosen: list[EvalPrompt]) -> dict[str, Any]:
        """Generate ``chosen`` x the kind's seeds, SSCD to the own images, change against ``none``."""
        g = generate_grid(pipe, cfg, [p.caption for p in chosen], seeds[kind], index)
        say(f"{name}: {kind} prompts, {len(g.images)} images in {g.seconds:.0f} s")
        emb = embedder.embed(list(g.images))
        sims = own(emb, [p.group for p in chosen for _ in seeds[kind]])
        out = {**summarize_similarity(sims, (0.5, 0.4)), "seconds": round(g.seconds, 1)}
        out |= {"per_image": [round(float(s), 4) for s in sims]} if kind == "memorized" else {}
        out["amg"] = ev.amg_term_stats(g.records)
        if kind == "memorized":
            out["prompt_opt_reached_pct"] = ev.prompt_opt_reached_pct(g.records)
        if name == "none":
            base[kind] = (g.images, emb)
        else:
            k = len(g.images)
            out["change"] = ev.image_change(g.images, base[kind][0][:k], emb, base[kind][1][:k])
        return out

    for name in ["none", *[m for m in methods if m != "none"]]:
        cfg = method_config(name, spec, gate, l_target)
        row: dict[str, Any] = {"label": LABELS.get(name, name)}
        if name.startswith("amg-") and spec.check_every > 1:
            row["label"] = row["label"].replace(")", f", sigma every {spec.check_every} steps)")
            row["check_every"] = spec.check_every
        ungated = name.endswith("-ungated")
        if not ungated:
            row["memorized"] = measure(name, cfg, "memorized", mem)
        uni_sel = uni[: spec.ungated_unique if ungated else len(uni)]
        if uni_sel:
            row["unique"] = measure(name, cfg, "unique", uni_sel)
        if incep is not None and not ungated:
            g = generate_chunked(pipe, cfg, [p.caption for p in held], spec.seed * 7919, index)
            fid_value = fid_from_features(real, incep(g.images))
            row["fid"] = {"fid": fid_value, "images": len(held), "seconds": round(g.seconds, 1)}
            row["fid"]["amg"] = ev.amg_term_stats(g.records)
            say(
                f"{name}: FID {fid_value:.2f} on {len(held)} held-out captions ({g.seconds:.0f} s to generate)"
            )
            if name == "none":
                base["fid"] = g.images
            else:
                row["fid"]["identical_to_unmitigated_pct"] = ev.identical_pct(g.images, base["fid"])
        rows[name] = row
        if partial is not None:  # a crash late in a long run keeps the methods already measured
            atomic_write(str(partial), json.dumps(rows, indent=1))
    fid_changes(rows)
    return {
        "gate_threshold": gate,
        "prompt_opt_l_target": l_target,
        "memorized_prompts": [{"caption": p.caption, "group": p.group, "copies": p.copies} for p in mem],
        "seeds": seeds["memorized"],
        "unique_prompts": len(uni),
        "unique_seeds": seeds["unique"],
        "fid_images": len(held),
        "fid_seeds": f"chunks of {spec.batch_size} captions, chunk k with seed {spec.seed * 7919} + k",
        "fid_reference": "held-out training-distribution images (lab_training.json heldout_keys)",
        "methods": rows,
    }
