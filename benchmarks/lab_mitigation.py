"""Detection and mitigation evidence on a lab model (issue 5; algorithms.md §2, §4, §6, §7, §8).

    python -m benchmarks.lab_mitigation --model models/lab-small --data 'data/small/*.tar' \
        --index out/index [--seeds 4] [--unique-prompts 50] [--fid-images 200] [--steps 25] \
        [--methods none,gni,...] [--machine TAG] [--docs docs/mitigation.md]

``--data`` must be the shards the model was trained on (``copyguard sample-data`` with the model's preset
and seed); the script checks that the model's held-out keys (``lab_training.json``) are among them.
``--index`` is ``OUT/index`` of ``copyguard curate`` on those shards (SSCD embedder).

1. **Detection** (§2): the text-conditional magnitude of every duplicated-group caption and every unique
   training caption along the ordinary CFG trajectory (:class:`~copyguard.mitigation.detect.Detector`),
   ROC AUC and TPR@1%FPR (:func:`~copyguard.mitigation.detect.roc_metrics`) for memorized (>= 25 copies)
   and for all duplicated prompts against the unique ones, at the first step with n = 1 and n = 4
   generations and over all steps. A threshold is calibrated at 1% FPR on the held-out captions (never
   trained on); it is AMG's detection gate.
2. **Mitigation** (§6.4, §7): the memorized prompts with ``--seeds`` seeds each, generated through
   :func:`copyguard.mitigation.generate.generate_images` (the code path of ``copyguard generate``) with
   each method: none, the §8 baselines, prompt-opt (§4; ``l_target`` = median first-step magnitude of the
   held-out captions), AMG ``paper`` and ``strong`` (§6) in detection-gated mode against the index. Each
   image's SSCD (the shipped ONNX ``sscd_disc_mixup``) against its prompt's own training image gives
   Top5%, Top1, % > 0.5, % > 0.4. FID (TF-Inception, :class:`~copyguard.mitigation.metrics.InceptionFeatures`)
   of ``--fid-images`` held-out captions (in chunks of 8 sharing a seed) against the held-out real images, as
   ``train/lab_eval.py`` measures it. Unique prompts: the change each method makes to the same (prompt,
   seed) image: SSCD cosine to the unmitigated image, mean absolute pixel change, bit-identical share.

Writes ``benchmarks/results/<machine>/lab_mitigation.json`` and renders ``docs/mitigation.md`` (with the
cost benchmark of ``benchmarks/bench_mitigation.py`` when its JSON exists).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import add_common_args, begin, result_path, setup_logging, write_result
from copyguard.curation.errors import UsageError
from copyguard.curation.fileops import atomic_write

__all__ = [
    "METHODS",
    "EvidenceSpec",
    "detection_evidence",
    "git_commit",
    "load_setup",
    "mitigation_evidence",
    "render_docs",
    "run_evidence",
]

log = logging.getLogger("benchmarks.lab_mitigation")
ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "mitigation.md"
MEMORIZED_COPIES = 25  # >= 25 copies: memorized by the small lab model (docs/lab_model.md)
METHODS = ("none", "gni", "rt", "cwr", "rna", "prompt-opt", "amg-paper", "amg-strong")
LABELS = {
    "none": "no mitigation",
    "gni": "GNI",
    "rt": "RT",
    "cwr": "CWR",
    "rna": "RNA",
    "prompt-opt": "prompt-opt (§4)",
    "amg-paper": "AMG paper (gated)",
    "amg-strong": "AMG strong (gated)",
    "amg-paper-ungated": "AMG paper (ungated)",
}
# algorithms.md §6.4: SD v1.4 on LAION memorized prompts (Top5%, Top1, %>0.5, %>0.4, FID).
PAPER_SD = {
    "none": (0.91, 0.93, 44.85, 59.23, 106.41),
    "gni": (0.91, 0.94, 42.75, 58.18, 97.81),
    "rt": (0.61, 0.84, 15.07, 26.75, 101.69),
    "cwr": (0.79, 0.85, 26.45, 40.93, 96.25),
    "rna": (0.75, 0.82, 17.78, 29.05, 99.68),
    "amg-paper": (0.41, 0.47, 0.00, 7.07, 99.12),
    "amg-strong": (0.34, 0.39, 0.00, 0.00, 100.45),
}


# What the recorded `small` run showed, beyond its tables (kept with the script that renders the page).
FINDINGS = """
### Findings (recorded `small` run; hand-written with the script that renders this page)

- **Training data.** `/work/data/small` on the development machine is *not* this model's training set
  (another generator: keys `u…`/`d…`, 2,900 unique captions; the model's held-out keys are absent and its
  duplicated captions score like unique ones, first-step magnitude ~0.4). The evidence uses
  `copyguard sample-data --preset small` (seed 0) regenerated, which matches: same held-out keys and
  duplicated groups, and the unmitigated row reproduces `memorization.json` exactly (78.1% > 0.4, 62.5% > 0.5).
  `load_setup` now refuses shards whose held-out keys or duplicated groups differ from the model's.
- **Detection meets its goal for the memorized prompts** (AUC 1.0, TPR@1%FPR 1.0 at the first step, n = 1).
  Pairs the model does not reproduce (2-10 copies) are not separable from unique captions at 1% FPR, as
  expected. Over all steps the unique prompts' magnitudes grow with the trajectory and the separation is
  *worse* (AUC 0.989, TPR 0.75) than at the first step. The gate calibrated at 1% FPR on never-seen
  held-out captions flags ~21% of the unique *training* captions (trained on once): seeing a caption
  once already raises its magnitude. A deployment should calibrate on prompts like the ones it will
  serve; the gate's false positives only cost AMG's work and G_spe's change, never an unflagged image.
- **AMG strong meets its goal; AMG paper does not.** Strong: 0% of the 32 memorized-prompt generations
  over 0.4 (78.1% unmitigated), Top1 0.35, FID +1.6% (σ checked every 2nd step). Paper (σ every step):
  31.2% over 0.4, 40% of the unmitigated share instead of a tenth (over the paper's own 0.5: 3.1% vs 62.5%;
  an earlier run checking σ every 2nd step gave 25.0% / 6.2%). Why paper falls short here: the
  σ-dependent terms barely fire. σ is the SSCD cosine of the VAE-decoded x0_hat (a 32 px image, upsampled
  to 320) to its nearest training image, and at 32 px it stays around 0.3-0.4 for every image, memorized or
  not (mean max σ 0.38 for the memorized prompts, 0.34 for flagged unique ones; distinct training images
  already score ~0.375 against their nearest other image, docs/lab_model.md), i.e. right at the paper's
  λ_t = 0.30-0.40. So G_dup (σ > λ_t *and* a y_N with > 20 duplicates) fired on 4.8 of 25 steps and G_sim
  on 2.2; the nearest training image of an early, blurry x0_hat is often another image, whose
  caption group has no y_N. Most of the reduction comes from G_spe, which the paper applies whenever σ > 0:
  s1 = 13σ ≈ 4-5 cuts the text guidance from 7.5 to ~3. `strong` (c1 x1.5, so s1 saturates at the full
  6.5; λ 0.05 lower; c3 x3) removes the copies. The paper's constants were set for 512 px SD, where an
  unrelated image's σ is far below 0.3; at 32 px they sit at the noise floor. Not done (time): λ and c1
  recalibrated for 32 px from the SSCD calibration figures, and strong with σ every step (its run did not
  finish in time; `check_every` is a config knob; with every 4th step strong left 1 of 32 at 0.415).
- **Unmitigated unique prompts and FID.** Gated AMG leaves every unflagged prompt bit-identical (it samples
  exactly as the standard pipeline); the changed unique images are the flagged ones. FID moves by < 0.1%.
  The baselines change every image (0% bit-identical) and remove far less: GNI and CWR almost nothing,
  RT and RNA about half, the shape of the paper's table. Their FID was not measured (CPU time on a
  machine shared with other jobs; ~5 min per method).
- **Prompt-opt** never reached its target (median held-out magnitude) within 10 AdamW steps on a memorized
  prompt (e.g. 2.30 → 1.21 on the 50-copy prompt of the cost benchmark) but halved the memorized share.
"""


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
    min_copies: int = MEMORIZED_COPIES
    ungated_unique: int = 0  # unique prompts also run through ungated AMG paper (0: skip)
    seed: int = 0


# --------------------------------------------------------------------------------------------- setup
def git_commit(root: Path = ROOT) -> str:
    """``HEAD``'s short hash, ``+dirty`` when tracked files differ ("unknown" outside a checkout)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def load_setup(model: str | Path, data: str, index_dir: str | Path) -> tuple[Any, Any, Any, dict[str, Any]]:
    """The AMG pipeline, the model's training data (with its held-out split) and the training index.

    Raises :class:`UsageError` when ``data`` does not hold the model's held-out keys (not its training set).
    """
    from copyguard.curation.index import TrainingIndex
    from copyguard.mitigation.models import load_sd_pipeline
    from copyguard.mitigation.pipeline_amg import StableDiffusionAMGPipeline
    from copyguard.train.lab_data import load_lab_data

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
        mine = {str(lab.row(k)["image_group"]) for k in lab.keys if lab.row(k)["kind"] == "dup_pair"}
        groups_ok = not theirs or theirs == mine
    if sorted(lab.heldout_keys) != sorted(held) or not groups_ok:
        raise UsageError(
            f"{data} is not the data {model} was trained on: its held-out keys or duplicated groups differ from "
            "lab_training.json / memorization.json "
            "(regenerate it with `copyguard sample-data` at the model's preset and seed)"
        )
    index = TrainingIndex.load(str(index_dir))
    return pipe, lab, index, info


@dataclass(frozen=True)
class Prompt:
    caption: str
    group: str
    copies: int


def evidence_prompts(lab: Any, spec: EvidenceSpec) -> dict[str, list[Prompt]]:
    """``memorized`` (>= min_copies), ``duplicated`` (all planted pairs), ``unique_eval`` (the lab eval's
    seeded choice), ``unique_all`` (every unique training caption) and ``heldout`` captions."""
    from copyguard.train.lab_eval import select_prompts

    chosen = select_prompts(lab, spec.unique_prompts, spec.seed)
    dups = [Prompt(p.caption, p.group, p.copies) for p in chosen if p.copies > 1]
    unique_eval = [Prompt(p.caption, p.group, 1) for p in chosen if p.copies <= 1]
    unique_all = [
        Prompt(c, str(lab.row(k)["image_group"]), 1)
        for k, c in zip(lab.keys, lab.captions, strict=True)
        if lab.row(k)["kind"] == "unique"
    ]
    if spec.detect_negatives is not None:
        rng = np.random.default_rng([spec.seed, 17])
        pick = rng.choice(len(unique_all), size=min(spec.detect_negatives, len(unique_all)), replace=False)
        unique_all = [unique_all[i] for i in sorted(pick)]
    heldout = [Prompt(c, k, 0) for k, c in zip(lab.heldout_keys, lab.heldout_captions, strict=True)]
    return {
        "memorized": [p for p in dups if p.copies >= spec.min_copies],
        "duplicated": dups,
        "unique_eval": unique_eval,
        "unique_all": unique_all,
        "heldout": heldout,
    }


def reference_prompts(prompts: dict[str, list[Prompt]]) -> tuple[list[str], str]:
    """Prompts known not to be memorized, for calibration: the held-out captions (never trained on), or,
    for a model without a held-out split (the tiny preset), the unique training captions."""
    if len(prompts["heldout"]) >= 10:
        return [p.caption for p in prompts["heldout"]], "held-out captions (never trained on)"
    return [p.caption for p in prompts["unique_all"]], "unique training captions (no held-out split)"


# ------------------------------------------------------------------------------------------ detection
def _roc(pos: np.ndarray, neg: np.ndarray) -> dict[str, Any]:
    from copyguard.mitigation.detect import roc_metrics

    r = roc_metrics(pos, neg)
    return {
        "auc": r["auc"],
        "tpr_at_1pct_fpr": r["tpr_at_1pct_fpr"],
        "positives": len(pos),
        "negatives": len(neg),
        "mean_pos": float(np.mean(pos)),
        "mean_neg": float(np.mean(neg)),
    }


def detection_evidence(pipe: Any, prompts: dict[str, list[Prompt]], spec: EvidenceSpec) -> dict[str, Any]:
    """§2 ROC at first step n=1 / n=4 and over all steps n=1 / n=4, plus the 1%-FPR threshold calibrated on
    the held-out captions and what it flags. One trajectory pass per prompt and seed gives every setting
    (the first step of the all-steps run is the first-step score: same seeds, deterministic DDIM)."""
    from copyguard.mitigation.detect import DetectConfig, Detector, threshold_for_fpr

    cfg = DetectConfig(
        num_inference_steps=spec.steps,
        end=None,
        generations=1,
        seed=spec.seed,
        guidance_scale=spec.guidance_scale,
        batch_size=64,
    )
    first_cfg = cfg.model_copy(update={"end": 1})
    dup = prompts["duplicated"]
    neg = prompts["unique_all"]
    captions = [p.caption for p in dup] + [p.caption for p in neg]
    t0 = time.perf_counter()
    refs, ref_name = reference_prompts(prompts)
    held_first = Detector(pipe, first_cfg, progress=False).magnitudes(refs)
    held_first = held_first[:, 0, 0]
    if spec.calibration_only:
        thr = threshold_for_fpr(held_first, spec.target_fpr)
        return {
            "calibration": {
                "reference": ref_name,
                "reference_prompts": len(held_first),
                "target_fpr": spec.target_fpr,
                "threshold": thr,
            }
        }
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
    order = ["first_step_n1", f"first_step_n{n}", "all_steps_n1"]
    settings = {k: settings[k] for k in order if k in settings}
    seconds = time.perf_counter() - t0
    mags = settings["first_step_n1"]
    is_mem = np.array([p.copies >= spec.min_copies for p in dup])
    out: dict[str, Any] = {"settings": {}, "seconds": round(seconds, 1), "steps": spec.steps}
    for name, m in settings.items():
        score = m.reshape(len(m), -1).mean(axis=1)
        s_dup, s_neg = score[: len(dup)], score[len(dup) :]
        out["settings"][name] = {
            "memorized": _roc(s_dup[is_mem], s_neg),
            "all_duplicated": _roc(s_dup, s_neg),
            "scores": {  # per prompt, for the ROC plots of docs/results.md
                "duplicated": [round(float(v), 5) for v in s_dup],
                "memorized": [bool(v) for v in is_mem],
                "unique": [round(float(v), 5) for v in s_neg],
            },
        }
    first = mags[:, 0, 0]
    thr = threshold_for_fpr(held_first, spec.target_fpr)
    f_dup, f_neg = first[: len(dup)], first[len(dup) :]
    out["calibration"] = {
        "reference": ref_name,
        "reference_prompts": len(held_first),
        "target_fpr": spec.target_fpr,
        "threshold": thr,
        "flagged_memorized_pct": float(100 * (f_dup[is_mem] > thr).mean()) if is_mem.any() else None,
        "flagged_duplicated_pct": float(100 * (f_dup > thr).mean()),
        "flagged_unique_train_pct": float(100 * (f_neg > thr).mean()),
        "flagged_heldout_pct": float(100 * (held_first > thr).mean()),
    }
    by_copies: dict[str, Any] = {}
    for c in sorted({p.copies for p in dup}):
        sel = np.array([p.copies == c for p in dup])
        by_copies[str(c)] = {
            "prompts": int(sel.sum()),
            "first_step_mean": float(f_dup[sel].mean()),
            "flagged_pct": float(100 * (f_dup[sel] > thr).mean()),
            "auc_vs_unique": _roc(f_dup[sel], f_neg)["auc"],
        }
    by_copies["unique"] = {"prompts": len(f_neg), "first_step_mean": float(f_neg.mean())}
    by_copies["heldout"] = {"prompts": len(held_first), "first_step_mean": float(held_first.mean())}
    out["by_copies_first_step_n1"] = by_copies
    return out


# ----------------------------------------------------------------------------------------- mitigation
def method_config(name: str, spec: EvidenceSpec, gate: float | None, l_target: float | None) -> Any:
    """The :class:`GenerateConfig` of method ``name`` (AMG gated at ``gate``; prompt-opt at ``l_target``)."""
    from copyguard.mitigation.amg_config import AMGConfig
    from copyguard.mitigation.generate import GenerateConfig
    from copyguard.mitigation.prompt_opt import PromptOptConfig

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


@dataclass
class Generated:
    images: np.ndarray  # uint8 [N, R, R, 3], prompt-major then seed
    records: list[dict[str, Any]]
    seconds: float


def generate(pipe: Any, cfg: Any, captions: Sequence[str], seeds: Sequence[int], index: Any) -> Generated:
    """``generate_images`` over ``captions`` x ``seeds``, returned prompt-major (as lab_eval orders them)."""
    from copyguard.mitigation.generate import generate_images

    t0 = time.perf_counter()
    cfg = cfg.model_copy(update={"seeds": list(seeds)})
    items = list(generate_images(pipe, list(captions), cfg, index=index))
    items.sort(key=lambda it: (it.prompt_index, list(seeds).index(it.seed)))
    images = np.stack([np.asarray(it.image.convert("RGB"), dtype=np.uint8) for it in items])
    return Generated(images, [it.record for it in items], time.perf_counter() - t0)


def generate_chunked(pipe: Any, cfg: Any, captions: Sequence[str], seed: int, index: Any) -> Generated:
    """One image per caption for FID: chunk ``k`` of ``cfg.batch_size`` captions uses seed ``seed + k``
    (``generate_images`` gives one seed to a batch; one call per caption would cost ~5x more on a CPU)."""
    size = cfg.batch_size
    chunks = [list(captions[i : i + size]) for i in range(0, len(captions), size)]
    parts = [generate(pipe, cfg, c, [seed + k], index) for k, c in enumerate(chunks)]
    return Generated(
        np.concatenate([p.images for p in parts]),
        [r for p in parts for r in p.records],
        sum(p.seconds for p in parts),
    )


def _amg_summary(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    traces = [r["amg"] for r in records if r.get("amg")]
    if not traces:
        return None
    flagged = [t for t in traces if t["flagged"]]
    fired = [t for t in flagged if any(t["g_spe"]) or any(t["g_dup"]) or any(t["g_sim"])]
    mean = lambda key: float(np.mean([sum(t[key]) for t in flagged])) if flagged else 0.0  # noqa: E731
    max_sig = [max((s for s in t["sigma"] if s is not None), default=np.nan) for t in flagged]
    return {
        "images": len(traces),
        "flagged_pct": 100.0 * len(flagged) / len(traces),
        "guided_pct": 100.0 * len(fired) / len(traces),
        "mean_steps_checked": mean("checked"),
        "mean_steps_g_spe": mean("g_spe"),
        "mean_steps_g_dup": mean("g_dup"),
        "mean_steps_g_sim": mean("g_sim"),
        "mean_max_sigma": float(np.nanmean(max_sig)) if flagged else None,
        "with_y_n_pct": 100.0 * sum(any(y is not None for y in t["y_n"]) for t in traces) / len(traces),
    }


def _own_reference(lab: Any, embedder: Any, groups: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """SSCD of one training image per wanted image group (duplicated copies collapse), as lab_eval does."""
    first: dict[str, int] = {}
    wanted = set(groups)
    for i, key in enumerate(lab.keys):
        g = str(lab.row(key)["image_group"])
        if g in wanted:
            first.setdefault(g, i)
    names = sorted(first)
    return embedder.embed([lab.images[first[g]] for g in names]), names


def _change(a: np.ndarray, b: np.ndarray, emb_a: np.ndarray, emb_b: np.ndarray) -> dict[str, float]:
    """How much images ``a`` differ from ``b`` (same prompt and seed): SSCD cosine, pixels, identity."""
    cos = (emb_a * emb_b).sum(1)
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).reshape(len(a), -1)
    return {
        "sscd_to_unmitigated_mean": float(cos.mean()),
        "sscd_to_unmitigated_min": float(cos.min()),
        "pixel_mean_abs_change": float(diff.mean()),
        "pixel_max_abs_change": float(diff.max()),
        "identical_pct": float(100.0 * (diff.max(axis=1) == 0).mean()),
    }


def mitigation_evidence(
    pipe: Any,
    lab: Any,
    index: Any,
    prompts: dict[str, list[Prompt]],
    spec: EvidenceSpec,
    gate: float,
    methods: Sequence[str] = METHODS,
    fid: bool = True,
    progress: Callable[[str], None] | None = None,
    partial: str | Path | None = None,
) -> dict[str, Any]:
    """The §6.4-shaped table: per method, §7 metrics of the memorized prompts' generations against their
    own training images, FID on held-out captions, and the unique prompts' change from unmitigated."""
    from copyguard.curation.embedders import load_embedder
    from copyguard.mitigation.detect import DetectConfig
    from copyguard.mitigation.metrics import InceptionFeatures, fid_from_features, summarize_similarity
    from copyguard.mitigation.prompt_opt import calibrate_l_target

    say = progress or log.info
    embedder = load_embedder("sscd-onnx", threads=torch.get_num_threads())
    mem, uni = prompts["memorized"], prompts["unique_eval"]
    held = prompts["heldout"][: spec.fid_images]
    mem_seeds = [spec.seed * 1000 + j for j in range(spec.seeds)]
    uni_seeds = [spec.seed * 1000 + j for j in range(spec.unique_seeds)]
    ref_emb, ref_names = _own_reference(lab, embedder, [p.group for p in mem + uni])
    mem_groups = [p.group for p in mem for _ in mem_seeds]
    uni_groups = [p.group for p in uni for _ in uni_seeds]

    def own(emb: np.ndarray, groups: list[str]) -> np.ndarray:
        from copyguard.mitigation.metrics import max_cosine_to_groups

        return max_cosine_to_groups(emb, ref_emb, groups, ref_names)

    l_target = None
    if "prompt-opt" in methods:
        l_target = calibrate_l_target(
            pipe,
            reference_prompts(prompts)[0],
            detect_config=DetectConfig(num_inference_steps=spec.steps, guidance_scale=spec.guidance_scale),
        )
    incep = InceptionFeatures() if fid and len(held) >= 2 else None
    real = incep(lab.heldout_images[: len(held)]) if incep is not None else None
    rows: dict[str, Any] = {}
    base: dict[str, Any] = {}
    for name in ["none", *[m for m in methods if m != "none"]]:
        cfg = method_config(name, spec, gate, l_target)
        row: dict[str, Any] = {"label": LABELS.get(name, name)}
        if name.startswith("amg-") and spec.check_every > 1:
            row["label"] = row["label"].replace(")", f", sigma every {spec.check_every} steps)")
            row["check_every"] = spec.check_every
        ungated = name.endswith("-ungated")
        if not ungated:
            g = generate(pipe, cfg, [p.caption for p in mem], mem_seeds, index)
            say(f"{name}: memorized prompts, {len(g.images)} images in {g.seconds:.0f} s")
            emb = embedder.embed(list(g.images))
            sims = own(emb, mem_groups)
            row["memorized"] = {
                **summarize_similarity(sims, (0.5, 0.4)),
                "seconds": round(g.seconds, 1),
                "per_image": [round(float(s), 4) for s in sims],
                "amg": _amg_summary(g.records),
                "prompt_opt_reached_pct": _reached(g.records),
            }
            if name == "none":
                base["mem"] = (g.images, emb)
            else:
                row["memorized"]["change"] = _change(g.images, base["mem"][0], emb, base["mem"][1])
        n_uni = spec.ungated_unique if ungated else len(uni)
        uni_sel = uni[:n_uni]
        if uni_sel:
            g = generate(pipe, cfg, [p.caption for p in uni_sel], uni_seeds, index)
            say(f"{name}: unique prompts, {len(g.images)} images in {g.seconds:.0f} s")
            emb = embedder.embed(list(g.images))
            sims = own(emb, uni_groups[: len(g.images)])
            row["unique"] = {
                **summarize_similarity(sims, (0.5, 0.4)),
                "seconds": round(g.seconds, 1),
                "amg": _amg_summary(g.records),
            }
            if name == "none":
                base["uni"] = (g.images, emb)
            else:
                k = len(g.images)
                row["unique"]["change"] = _change(g.images, base["uni"][0][:k], emb, base["uni"][1][:k])
        if incep is not None and not ungated:
            g = generate_chunked(pipe, cfg, [p.caption for p in held], spec.seed * 7919, index)
            fid_value = fid_from_features(real, incep(g.images))
            row["fid"] = {"fid": fid_value, "images": len(held), "seconds": round(g.seconds, 1)}
            row["fid"]["amg"] = _amg_summary(g.records)
            say(
                f"{name}: FID {fid_value:.2f} on {len(held)} held-out captions ({g.seconds:.0f} s to generate)"
            )
            if name == "none":
                base["fid"] = g.images
            else:
                diff = np.abs(g.images.astype(np.int16) - base["fid"].astype(np.int16)).reshape(len(held), -1)
                row["fid"]["identical_to_unmitigated_pct"] = float(100.0 * (diff.max(axis=1) == 0).mean())
        rows[name] = row
        if partial is not None:  # a crash late in a long run keeps the methods already measured
            atomic_write(str(partial), json.dumps(rows, indent=1))
    none_fid = (rows["none"].get("fid") or {}).get("fid")
    for row in rows.values():
        if none_fid and row.get("fid"):
            row["fid"]["change_pct"] = 100.0 * (row["fid"]["fid"] - none_fid) / none_fid
    return {
        "gate_threshold": gate,
        "prompt_opt_l_target": l_target,
        "memorized_prompts": [{"caption": p.caption, "group": p.group, "copies": p.copies} for p in mem],
        "seeds": mem_seeds,
        "unique_prompts": len(uni),
        "unique_seeds": uni_seeds,
        "fid_images": len(held),
        "fid_seeds": f"chunks of {spec.batch_size} captions, chunk k with seed {spec.seed * 7919} + k",
        "fid_reference": "held-out training-distribution images (lab_training.json heldout_keys)",
        "methods": rows,
    }


def _reached(records: list[dict[str, Any]]) -> float | None:
    po = [r["prompt_opt"] for r in records if r.get("prompt_opt")]
    return float(100.0 * np.mean([p["reached_target"] for p in po])) if po else None


# --------------------------------------------------------------------------------------------- goals
def goals(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals, checked against the figures (None where not measured)."""
    rows = result["mitigation"]["methods"]
    none = rows["none"]["memorized"]
    out: dict[str, Any] = {}
    if "settings" in result["detection"]:
        det = result["detection"]["settings"]["first_step_n1"]["memorized"]
        out["detection_auc_ge_0.95"] = det["auc"] >= 0.95
        out["detection_tpr1_ge_0.8"] = det["tpr_at_1pct_fpr"] >= 0.8
    if "amg-strong" in rows:
        out["amg_strong_zero_memorized"] = rows["amg-strong"]["memorized"]["pct_gt_0.4"] == 0.0
    if "amg-paper" in rows:
        out["amg_paper_below_tenth"] = rows["amg-paper"]["memorized"]["pct_gt_0.4"] < none["pct_gt_0.4"] / 10
    for name in ("amg-paper", "amg-strong"):
        fid = (rows.get(name) or {}).get("fid")
        if fid and "change_pct" in fid:
            out[f"{name}_fid_within_10pct"] = abs(fid["change_pct"]) <= 10.0
        uni = (rows.get(name) or {}).get("unique") or {}
        if uni.get("change") and uni.get("amg"):  # every prompt the gate did not flag is bit-identical
            unflagged = 100.0 - uni["amg"]["flagged_pct"]
            out[f"{name}_unflagged_unique_bit_identical"] = uni["change"]["identical_pct"] >= unflagged - 1e-9
    return out


# ----------------------------------------------------------------------------------------------- run
def run_evidence(
    model: str | Path,
    data: str,
    index_dir: str | Path,
    spec: EvidenceSpec,
    machine: str,
    methods: Sequence[str] = METHODS,
    fid: bool = True,
    argv: list[str] | None = None,
    partial: str | Path | None = None,
) -> dict[str, Any]:
    """Everything above; returns the result JSON body (with the :func:`begin` header)."""
    report = begin(
        "lab_mitigation", "benchmarks.lab_mitigation", argv, machine, threads=torch.get_num_threads()
    )
    report["commit"] = git_commit()
    pipe, lab, index, info = load_setup(model, data, index_dir)
    prompts = evidence_prompts(lab, spec)
    if not prompts["memorized"]:
        raise UsageError(f"no duplicated prompt with >= {spec.min_copies} copies in {data}")
    report["model"] = {
        "path": str(model),
        "preset": info.get("preset"),
        "resolution": int(pipe.unet.config.sample_size * pipe.vae_scale_factor),
        "params": info.get("params"),
    }
    report["data"] = {
        "shards": data,
        "train_samples": len(lab.keys),
        "heldout": len(lab.heldout_keys),
        "index": str(index_dir),
        "index_images": len(index),
        "index_embedder": index.info.get("embedder", {}).get("name"),
        "prompts": {k: len(v) for k, v in prompts.items()},
    }
    report["spec"] = dict(spec.__dict__)
    t0 = time.perf_counter()
    report["detection"] = detection_evidence(pipe, prompts, spec)
    log.info("detection done in %.0f s", time.perf_counter() - t0)
    gate = report["detection"]["calibration"]["threshold"]
    report["mitigation"] = mitigation_evidence(
        pipe, lab, index, prompts, spec, gate, methods, fid, partial=partial
    )
    report["goals"] = goals(report)
    return report


def merge_results(main: dict[str, Any], others: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Add the methods measured by other runs (split over processes to share a busy machine) to ``main``.

    Every run measures ``none`` itself; its per-image figures must equal ``main``'s (same model, data,
    seeds: sampling is deterministic), and the gate threshold must be the same, else the merge is refused.
    """
    rows = main["mitigation"]["methods"]
    base = rows["none"]["memorized"]["per_image"]
    main.setdefault("merged_runs", [])
    for other in others:
        o = other["mitigation"]
        if o["methods"]["none"]["memorized"]["per_image"] != base:
            raise UsageError(f"cannot merge {other['command']!r}: its unmitigated generations differ")
        if abs(o["gate_threshold"] - main["mitigation"]["gate_threshold"]) > 1e-9:
            raise UsageError(f"cannot merge {other['command']!r}: another gate threshold")
        for name, row in o["methods"].items():
            if name != "none":
                rows[name] = row
        if main["mitigation"].get("prompt_opt_l_target") is None:
            main["mitigation"]["prompt_opt_l_target"] = o.get("prompt_opt_l_target")
        if not rows["none"].get("fid") and o["methods"]["none"].get("fid"):  # main ran without FID
            rows["none"]["fid"] = o["methods"]["none"]["fid"]
            for key in ("fid_images", "fid_seeds", "fid_reference"):
                main["mitigation"][key] = o.get(key, main["mitigation"].get(key))
        main["merged_runs"].append(
            {
                "command": other["command"],
                "methods": [k for k in o["methods"] if k != "none"],
                "machine": other["machine"],
                "wall_s": other.get("wall_s"),
                "commit": other.get("commit"),
            }
        )
    none_fid = (rows["none"].get("fid") or {}).get("fid")
    for row in rows.values():
        if none_fid and row.get("fid"):
            row["fid"]["change_pct"] = 100.0 * (row["fid"]["fid"] - none_fid) / none_fid
    order = [m for m in (*METHODS, "amg-paper-ungated") if m in rows]
    main["mitigation"]["methods"] = {k: rows[k] for k in order}
    main["goals"] = goals(main)
    return main


# ------------------------------------------------------------------------------------------ markdown
def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v).replace("|", "\\|")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return out


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def render_evidence(r: dict[str, Any]) -> list[str]:
    """The evidence sections of docs/mitigation.md from one lab_mitigation result."""
    m, d, mit = r["machine"], r["detection"], r["mitigation"]
    cal = d["calibration"]
    lines = [
        "## Evidence on the `small` lab model",
        "",
        f"Model `{r['model']['path']}` ({r['model']['resolution']} px, preset {r['model']['preset']}), "
        f"trained on `{r['data']['shards']}` ({r['data']['train_samples']} training samples, "
        f"{r['data']['heldout']} unique samples held out). Training-set index: `copyguard curate` on the same "
        f"shards with the `{r['data']['index_embedder']}` embedder ({r['data']['index_images']} kept images). "
        f"DDIM {r['spec']['steps']} steps, guidance {r['spec']['guidance_scale']}. Commit `{r.get('commit')}`; "
        f"machine `{m['tag']}` ({m.get('cpu_model')}, {m.get('usable_cpus')} cores, torch threads "
        f"{m.get('threads')}, load {(m.get('load_average_at_start') or ['?'])[0]} → "
        f"{(m.get('load_average_at_end') or ['?'])[0]}); run took {r.get('wall_s')} s. Reproduce: "
        f"`{r['command']}`.",
        "",
        "### Detection (algorithms.md §2)",
        "",
        f"Text-conditional magnitude of the duplicated-group captions against all "
        f"{d['settings']['first_step_n1']['memorized']['negatives']} unique training captions (each trained on "
        "once). *Memorized*: the pairs with >= 25 copies (the ones the model reproduces); *all duplicated*: "
        "2 to 50 copies. TPR@1%FPR is the highest TPR at a reachable threshold with FPR <= 1%.",
        "",
    ]
    rows = []
    for name, s in d["settings"].items():
        mem, dup = s["memorized"], s["all_duplicated"]
        rows.append(
            [
                name.replace("_n", ", n = ").replace("_", " "),
                f"{mem['auc']:.4f}",
                f"{mem['tpr_at_1pct_fpr']:.3f}",
                f"{dup['auc']:.4f}",
                f"{dup['tpr_at_1pct_fpr']:.3f}",
                f"{mem['mean_pos']:.3f} / {dup['mean_pos']:.3f} / {mem['mean_neg']:.3f}",
            ]
        )
    lines += _table(
        [
            "setting",
            f"AUC memorized ({d['settings']['first_step_n1']['memorized']['positives']})",
            "TPR@1%FPR memorized",
            f"AUC all duplicated ({d['settings']['first_step_n1']['all_duplicated']['positives']})",
            "TPR@1%FPR all duplicated",
            "mean score memorized / duplicated / unique",
        ],
        rows,
    )
    lines += [
        "",
        "Reference on SD v1.4 (§2, a different model): all 50 steps, n = 4: AUC 0.994, TPR@1%FPR 0.982; "
        "first step (SD 1.5 reproduction): AUC 0.962, TPR@1%FPR 0.79.",
        "",
        f"First-step magnitude (n = 1) by duplication count; the gate threshold **{cal['threshold']:.4f}** "
        f"is calibrated at {100 * cal['target_fpr']:.0f}% FPR on {cal['reference_prompts']} "
        f"{cal['reference']}. It flags {_pct(cal['flagged_memorized_pct'])}% of the memorized prompts, "
        f"{_pct(cal['flagged_duplicated_pct'])}% of all duplicated ones, "
        f"{_pct(cal['flagged_unique_train_pct'])}% of the unique training captions and "
        f"{_pct(cal['flagged_heldout_pct'])}% of the held-out captions.",
        "",
    ]
    rows = [
        [
            k,
            v["prompts"],
            f"{v['first_step_mean']:.3f}",
            _pct(v.get("flagged_pct")),
            _fmt(v.get("auc_vs_unique")),
        ]
        for k, v in d["by_copies_first_step_n1"].items()
    ]
    lines += _table(["copies", "prompts", "mean first-step magnitude", "% flagged", "AUC vs unique"], rows)
    lines += [
        "",
        "### Mitigation (§6.4-shaped; SSCD of each memorized-prompt generation against its own training image)",
        "",
        f"{len(mit['memorized_prompts'])} memorized prompts (>= 25 copies) x {len(mit['seeds'])} seeds "
        f"= {len(mit['memorized_prompts']) * len(mit['seeds'])} generations per method, generated through "
        "`copyguard.mitigation.generate.generate_images` (the code path of `copyguard generate`). SSCD: the "
        "shipped ONNX `sscd_disc_mixup`, 32 px images upsampled to 320. At 32 px a true copy scores "
        "~0.5-0.75 and distinct images rarely exceed 0.4 (docs/lab_model.md), so **%>0.4** is this "
        f"model's memorization share; %>0.5 is the paper's. FID: {mit['fid_images']} held-out captions "
        f"({mit.get('fid_seeds', 'one seed each')}) against the held-out real images (TF-Inception; absolute values at 32 px and 200 "
        f"images are high, compare the change). AMG runs detection-gated (gate {mit['gate_threshold']:.4f}); "
        f"prompt-opt's l_target = {_fmt(mit['prompt_opt_l_target'], 4)} (median first-step magnitude of the "
        "held-out captions).",
        "",
    ]
    rows = []
    for name, row in mit["methods"].items():
        mem = row.get("memorized")
        if not mem:
            continue
        fid = row.get("fid") or {}
        paper = PAPER_SD.get(name)
        rows.append(
            [
                row["label"],
                f"{mem['top5pct']:.3f}",
                f"{mem['top1']:.3f}",
                f"{mem['pct_gt_0.5']:.1f}",
                f"{mem['pct_gt_0.4']:.1f}",
                f"{mem['mean']:.3f}",
                _fmt(fid.get("fid"), 4),
                "-" if "change_pct" not in fid else f"{fid['change_pct']:+.1f}%",
                "-" if paper is None else " / ".join(f"{v:g}" for v in paper),
            ]
        )
    lines += _table(
        [
            "method",
            "Top5%",
            "Top1",
            "%>0.5",
            "%>0.4",
            "mean SSCD",
            "FID",
            "FID change",
            "paper, SD v1.4 (different model): Top5% / Top1 / %>0.5 / %>0.4 / FID",
        ],
        rows,
    )
    lines += [
        "",
        "Unique prompts: the same (prompt, seed) generated with and without each mitigation "
        f"({mit['unique_prompts']} unique training captions x {len(mit['unique_seeds'])} seed(s); FID set: "
        f"{mit['fid_images']} held-out captions). *SSCD to unmitigated*: cosine between the two images; "
        "*own %>0.4*: share of the unique prompts' generations above 0.4 against their own training image.",
        "",
    ]
    rows = []
    for row in mit["methods"].values():
        u = row.get("unique")
        if not u:
            continue
        ch = u.get("change") or {}
        amg = u.get("amg") or {}
        fid = row.get("fid") or {}
        rows.append(
            [
                row["label"],
                _fmt(ch.get("identical_pct"), 4),
                _fmt(ch.get("sscd_to_unmitigated_mean")),
                _fmt(ch.get("pixel_mean_abs_change")),
                f"{u['pct_gt_0.4']:.1f}",
                f"{u['mean']:.3f}",
                _fmt(amg.get("flagged_pct")) if amg else "-",
                _fmt(fid.get("identical_to_unmitigated_pct"), 4),
            ]
        )
    lines += _table(
        [
            "method",
            "% bit-identical",
            "SSCD to unmitigated (mean)",
            "mean abs pixel change (0-255)",
            "own %>0.4",
            "own mean SSCD",
            "AMG % flagged",
            "FID set % bit-identical",
        ],
        rows,
    )
    amg_rows = []
    for row in mit["methods"].values():
        a = (row.get("memorized") or {}).get("amg")
        if a:
            amg_rows.append(
                [
                    row["label"],
                    _fmt(a["flagged_pct"]),
                    _fmt(a["guided_pct"]),
                    _fmt(a["mean_max_sigma"]),
                    _fmt(a["mean_steps_checked"]),
                    _fmt(a["mean_steps_g_spe"]),
                    _fmt(a["mean_steps_g_dup"]),
                    _fmt(a["mean_steps_g_sim"]),
                    _fmt(a["with_y_n_pct"]),
                    _fmt(row["memorized"]["seconds"]),
                ]
            )
    if amg_rows:
        lines += [
            "",
            "AMG on the memorized prompts, from the per-image traces (steps out of "
            f"{r['spec']['steps']}; sigma = SSCD cosine of the VAE-decoded x0_hat to its nearest training image "
            "in the index, computed with the differentiable torch SSCD):",
            "",
        ]
        lines += _table(
            [
                "method",
                "% flagged",
                "% guided",
                "mean max sigma",
                "steps checked",
                "steps G_spe",
                "steps G_dup",
                "steps G_sim",
                "% with y_N",
                "seconds",
            ],
            amg_rows,
        )
    if r.get("merged_runs"):
        lines += [
            "",
            "The methods were measured in parallel processes (same model, data, seeds and gate; each run's "
            "unmitigated images were checked equal before merging with `python -m benchmarks.lab_mitigation "
            "merge`):",
            "",
        ]
        for run in r["merged_runs"]:
            load = run["machine"].get("load_average_at_start") or ["?"]
            lines.append(
                f"- {', '.join(run['methods'])}: `{run['command']}` ({run.get('wall_s')} s, load {load[0]})"
            )
    lines += [
        "",
        "Goals: " + ", ".join(f"{k} **{'pass' if v else 'FAIL'}**" for k, v in r["goals"].items()),
        "",
    ]
    return lines


def render_docs(results_root: str | Path, machine: str, docs: str | Path = DOCS) -> Path:
    """docs/mitigation.md from ``lab_mitigation.json`` and (when present) ``mitigation.json``."""
    from benchmarks.bench_mitigation import render_bench

    lines = [
        "# Detection and mitigation: evidence and costs",
        "",
        "<!-- Generated by `python -m benchmarks.lab_mitigation` / `python -m benchmarks.bench_mitigation` "
        "from benchmarks/results/<machine>/{lab_mitigation,mitigation}.json; do not edit by hand. -->",
        "",
        "What `copyguard detect` and `copyguard generate` (README) achieve on a model that really memorizes: "
        "the `small` lab model (docs/lab_model.md), and what they cost. The paper figures quoted beside ours "
        "come from Stable Diffusion v1.4 on LAION (algorithms.md §2, §6.4): **a different model**, 512 px, "
        "shown for shape only. No GPU was lent to this task: every figure is from a 2-core CPU.",
        "",
    ]
    ev = result_path(results_root, machine, "lab_mitigation")
    if ev.is_file():
        lines += render_evidence(json.loads(ev.read_text()))
        lines += ["", *FINDINGS.strip().splitlines(), ""]
    bench = result_path(results_root, machine, "mitigation")
    if bench.is_file():
        lines += ["", *render_bench(json.loads(bench.read_text()))]
    path = Path(docs)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(str(path), "\n".join(lines).rstrip() + "\n")
    log.info("wrote %s", path)
    return path


def merge_main(argv: list[str]) -> int:
    """``python -m benchmarks.lab_mitigation merge MAIN.json OTHER.json ... [--docs PATH]``: merge the other
    runs' methods into MAIN (rewritten in place) and render the docs from MAIN's folder."""
    parser = argparse.ArgumentParser(prog="lab_mitigation merge")
    parser.add_argument("main")
    parser.add_argument("others", nargs="+")
    parser.add_argument("--docs", default=str(DOCS))
    args = parser.parse_args(argv)
    setup_logging()
    main_path = Path(args.main)
    result = merge_results(
        json.loads(main_path.read_text()), [json.loads(Path(p).read_text()) for p in args.others]
    )
    atomic_write(str(main_path), json.dumps(result, indent=2) + "\n")
    render_docs(main_path.parent.parent, main_path.parent.name, args.docs)
    print(json.dumps(result["goals"], indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["merge"]:
        return merge_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="a copyguard lab model folder (default: the cached small one)"
    )
    parser.add_argument("--data", default=None, help="the shards the model was trained on (quote the glob)")
    parser.add_argument("--index", default=None, help="OUT/index of `copyguard curate` on those shards")
    parser.add_argument("--seeds", type=int, default=4, help="seeds per memorized prompt")
    parser.add_argument("--unique-prompts", type=int, default=50)
    parser.add_argument("--unique-seeds", type=int, default=1)
    parser.add_argument("--fid-images", type=int, default=200)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument(
        "--ungated-unique", type=int, default=0, help="unique prompts through ungated AMG paper"
    )
    parser.add_argument("--detect-generations", type=int, default=4, help="n of the first-step n > 1 setting")
    parser.add_argument("--no-all-steps", action="store_true", help="skip the all-steps detection setting")
    parser.add_argument("--calibration-only", action="store_true", help="detection: the gate threshold only")
    parser.add_argument("--check-every", type=int, default=1, help="AMG sigma check interval (steps)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)"
    )
    parser.add_argument("--docs", default=str(DOCS), help="page to render")
    parser.add_argument("--partial", default=None, help="write each finished method's figures here")
    add_common_args(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.ungated_unique:
        methods.append("amg-paper-ungated")
    spec = EvidenceSpec(
        seeds=args.seeds,
        unique_prompts=args.unique_prompts,
        unique_seeds=args.unique_seeds,
        fid_images=args.fid_images,
        steps=args.steps,
        ungated_unique=args.ungated_unique,
        detect_generations=args.detect_generations,
        detect_all_steps=not args.no_all_steps,
        calibration_only=args.calibration_only,
        check_every=args.check_every,
    )
    if args.model is None or args.data is None or args.index is None:
        from copyguard.pipelines.lab_cache import lab_setup

        model, data, index = lab_setup("small")
        args.model, args.data, args.index = (
            args.model or str(model),
            args.data or data,
            args.index or str(index),
        )
    try:
        result = run_evidence(
            args.model,
            args.data,
            args.index,
            spec,
            args.machine,
            methods,
            args.fid_images >= 2,
            argv,
            partial=args.partial,
        )
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_result(result, args.out, args.machine, "lab_mitigation")
    if not args.quick and not args.calibration_only:
        render_docs(args.out, args.machine, args.docs)
    print(json.dumps(result["goals"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
