"""Evidence from scores, images and records: detection ROC, memorization tables, image change, AMG terms.

Pure functions (numpy; scikit-learn for the ROC) used by the audit, the lab and the benchmarks alike:

- detection (Wen et al., ICLR 2024; copyguard's protocol in docs/results.md): ROC AUC and TPR@1%FPR of
  memorized against non-memorized prompts, per detection setting (first step or all steps, n generations);
  a prompt's score is the mean of ``d_t`` over its generations and steps;
- memorization (Chen et al., CVPR 2024, Table 1; Somepalli et al., NeurIPS 2023): Top5%, Top1, shares over
  thresholds of SSCD similarity, and nL2 at pixel level;
- image change of a mitigation against the unmitigated image of the same (prompt, seed);
- AMG (Chen et al., CVPR 2024): how often the gate flagged a prompt and each guidance term
  (G_spe, G_dup, G_sim) fired, from the per-image traces of the AMG pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from copyguard.mitigation.metrics import summarize_nl2, summarize_similarity

__all__ = [
    "amg_term_stats",
    "detection_roc",
    "identical_pct",
    "image_change",
    "memorization_summary",
    "prompt_opt_reached_pct",
    "prompt_scores",
    "relative_change_pct",
    "roc_summary",
    "scores_by_copies",
]


def roc_summary(pos: Sequence[float] | np.ndarray, neg: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """AUC and TPR@1%FPR of ``pos`` (memorized: higher scores) against ``neg``, with counts and means."""
    from copyguard.mitigation.detect import roc_metrics

    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    r = roc_metrics(pos, neg)
    return {
        "auc": r["auc"],
        "tpr_at_1pct_fpr": r["tpr_at_1pct_fpr"],
        "positives": int(pos.size),
        "negatives": int(neg.size),
        "mean_pos": float(pos.mean()),
        "mean_neg": float(neg.mean()),
    }


def prompt_scores(magnitudes: np.ndarray) -> np.ndarray:
    """Detection score (Wen et al., ICLR 2024) per prompt from ``Detector.magnitudes``'
    ``[prompts, generations, steps]``: the mean ``d_t``."""
    m = np.asarray(magnitudes, dtype=np.float64)
    return m.reshape(len(m), -1).mean(axis=1)


def detection_roc(
    settings: Mapping[str, np.ndarray], positives: int, memorized: Sequence[bool] | np.ndarray
) -> dict[str, Any]:
    """Per detection setting, ROC of the memorized and of all duplicated prompts against the rest.

    Every value of ``settings`` holds the magnitudes ``[prompts, generations, steps]`` of the same prompts:
    the first ``positives`` are duplicated (``memorized`` marks those the model reproduces), the others are
    the negatives. Returns ``{setting: {"memorized", "all_duplicated", "scores"}}`` (``scores``: per prompt,
    for ROC plots).
    """
    is_mem = np.asarray(memorized, dtype=bool)
    if is_mem.shape != (positives,):
        raise ValueError(f"memorized must mark each of the {positives} duplicated prompts")
    out: dict[str, Any] = {}
    for name, mags in settings.items():
        score = prompt_scores(mags)
        dup, neg = score[:positives], score[positives:]
        out[name] = {
            "memorized": roc_summary(dup[is_mem], neg),
            "all_duplicated": roc_summary(dup, neg),
            "scores": {
                "duplicated": [round(float(v), 5) for v in dup],
                "memorized": [bool(v) for v in is_mem],
                "unique": [round(float(v), 5) for v in neg],
            },
        }
    return out


def scores_by_copies(
    dup_scores: Sequence[float] | np.ndarray,
    copies: Sequence[int],
    unique_scores: Sequence[float] | np.ndarray,
    reference_scores: Sequence[float] | np.ndarray,
    threshold: float,
) -> dict[str, Any]:
    """Per duplication count: prompts, mean score, % flagged (``score > threshold``) and AUC against the
    unique prompts; then the unique and the reference prompts' counts and means."""
    dup, uni = np.asarray(dup_scores, dtype=np.float64), np.asarray(unique_scores, dtype=np.float64)
    ref = np.asarray(reference_scores, dtype=np.float64)
    cps = np.asarray(copies)
    out: dict[str, Any] = {}
    for c in sorted({int(c) for c in cps}):
        sel = cps == c
        out[str(c)] = {
            "prompts": int(sel.sum()),
            "first_step_mean": float(dup[sel].mean()),
            "flagged_pct": float(100.0 * (dup[sel] > threshold).mean()),
            "auc_vs_unique": roc_summary(dup[sel], uni)["auc"],
        }
    out["unique"] = {"prompts": int(uni.size), "first_step_mean": float(uni.mean())}
    out["heldout"] = {"prompts": int(ref.size), "first_step_mean": float(ref.mean())}
    return out


def memorization_summary(
    mask: np.ndarray,
    sim_own: np.ndarray,
    sim_train: np.ndarray | None,
    nl2: np.ndarray | None,
    threshold: float,
) -> dict[str, Any]:
    """Memorization metrics over the generations selected by ``mask``: SSCD to the own and (when given) the
    nearest training image, at ``threshold`` and 0.5, and nL2 (when given)."""
    mask = np.asarray(mask, dtype=bool)
    thresholds = sorted({threshold, 0.5}, reverse=True)
    out: dict[str, Any] = {"generations": int(mask.sum())}
    if not mask.any():
        return out
    out["sscd_own"] = summarize_similarity(np.asarray(sim_own)[mask], thresholds)
    if sim_train is not None:
        out["sscd_train"] = summarize_similarity(np.asarray(sim_train)[mask], thresholds)
    if nl2 is not None:
        out["nl2"] = summarize_nl2(np.asarray(nl2)[mask])
    return out


def identical_pct(a: np.ndarray, b: np.ndarray) -> float:
    """Share (%) of image pairs ``a[i]``, ``b[i]`` that are bit-identical."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"image sets differ in shape: {a.shape} vs {b.shape}")
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).reshape(len(a), -1)
    return float(100.0 * (diff.max(axis=1) == 0).mean())


def image_change(a: np.ndarray, b: np.ndarray, emb_a: np.ndarray, emb_b: np.ndarray) -> dict[str, float]:
    """How much images ``a`` (mitigated) differ from ``b`` (unmitigated, same prompt and seed): SSCD cosine
    of their unit embeddings, mean and max absolute pixel change (0-255), bit-identical share."""
    a, b = np.asarray(a), np.asarray(b)
    cos = (np.asarray(emb_a, dtype=np.float64) * np.asarray(emb_b, dtype=np.float64)).sum(1)
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).reshape(len(a), -1)
    return {
        "sscd_to_unmitigated_mean": float(cos.mean()),
        "sscd_to_unmitigated_min": float(cos.min()),
        "pixel_mean_abs_change": float(diff.mean()),
        "pixel_max_abs_change": float(diff.max()),
        "identical_pct": identical_pct(a, b),
    }


def _trace(record: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The AMG trace of a ``generate_images`` record (key ``amg``), or the record itself when it is a trace."""
    return record.get("amg") if "flagged" not in record else record


def amg_term_stats(records: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """How often AMG acted, from per-image traces (``AMGTrace.to_dict()``; records of ``generate_images``).

    ``flagged_pct``: images whose prompt passed the gate; ``guided_pct``: images where any term fired;
    ``mean_steps_*``: per flagged image, steps where sigma was checked and each term fired;
    ``mean_max_sigma``: mean over flagged images of their largest sigma; ``with_y_n_pct``: images with a
    duplicated caption y_N at some step. None when no record carries a trace.
    """
    traces = [t for t in (_trace(r) for r in records) if t]
    if not traces:
        return None
    flagged = [t for t in traces if t["flagged"]]
    fired = [t for t in flagged if any(t["g_spe"]) or any(t["g_dup"]) or any(t["g_sim"])]

    def mean_steps(key: str) -> float:
        return float(np.mean([sum(bool(v) for v in t[key]) for t in flagged])) if flagged else 0.0

    max_sigma = [max((s for s in t["sigma"] if s is not None), default=np.nan) for t in flagged]
    return {
        "images": len(traces),
        "flagged_pct": 100.0 * len(flagged) / len(traces),
        "guided_pct": 100.0 * len(fired) / len(traces),
        "mean_steps_checked": mean_steps("checked"),
        "mean_steps_g_spe": mean_steps("g_spe"),
        "mean_steps_g_dup": mean_steps("g_dup"),
        "mean_steps_g_sim": mean_steps("g_sim"),
        "mean_max_sigma": float(np.nanmean(max_sigma))
        if flagged and not np.all(np.isnan(max_sigma))
        else None,
        "with_y_n_pct": 100.0 * sum(any(y is not None for y in t["y_n"]) for t in traces) / len(traces),
    }


def prompt_opt_reached_pct(records: Sequence[Mapping[str, Any]]) -> float | None:
    """Share (%) of prompt-optimized images whose optimization reached ``l_target`` (None: none optimized)."""
    po = [r["prompt_opt"] for r in records if r.get("prompt_opt")]
    return float(100.0 * np.mean([p["reached_target"] for p in po])) if po else None


def relative_change_pct(value: float | None, base: float | None) -> float | None:
    """``100 (value - base) / base`` (e.g. a method's FID against the unmitigated FID); None when unknown."""
    if value is None or not base:
        return None
    return 100.0 * (value - base) / base
