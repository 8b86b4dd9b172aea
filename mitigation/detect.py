"""Memorization detection by text-conditional magnitude (Wen et al., ICLR 2024), calibration and ROC metrics.

A prompt's score is the mean of ``d_t`` over the steps ``[start, end)`` of an ordinary-CFG sampling
trajectory and over ``generations`` seeds. The headline setting is the first step with one generation
(``start = 0, end = 1``): one CFG UNet evaluation pair at ``x_T`` and no denoising at all. Seed ``seed + j``
gives generation ``j`` the same ``x_T`` for every prompt (drawn on the CPU like diffusers does), so scores
are deterministic and comparable across prompts, batches and devices.

Flag rule: a prompt is flagged when ``score > threshold``. :meth:`Detector.calibrate` picks the threshold
from reference prompts known NOT to be memorized so that at most ``target_fpr`` of them are flagged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from copyguard.common.errors import UsageError
from copyguard.common.runtime import progress_bar
from copyguard.mitigation.config import DetectConfig
from copyguard.mitigation.magnitude import cfg_trajectory, initial_latents, latent_shape
from copyguard.mitigation.prompts import encode_prompts

__all__ = ["Detector", "roc_metrics", "threshold_for_fpr", "tpr_at_fpr"]

log = logging.getLogger(__name__)


class Detector:
    """Detector over any ``StableDiffusionPipeline``-like object (unet, text_encoder, tokenizer,
    scheduler; vae or ``vae_scale_factor`` only when ``height``/``width`` are set).

    Runs on the UNet's device and dtype. ``threshold`` is set by :meth:`calibrate` or by the caller.
    """

    def __init__(
        self,
        pipe: Any,
        config: DetectConfig | None = None,
        *,
        threshold: float | None = None,
        progress: bool = True,
    ) -> None:
        self.pipe = pipe
        self.config = config or DetectConfig()
        self.threshold = threshold
        self.progress = progress
        self.device = pipe.unet.device
        self.dtype = pipe.unet.dtype

    # ------------------------------------------------------------------------------------------ scoring
    def uncond_embedding(self) -> torch.Tensor:
        """``e_0`` [1, 77, D], the embedding of the empty prompt (recomputed per call: weights may change)."""
        with torch.no_grad():
            return encode_prompts(self.pipe, [""], self.device).to(self.dtype)

    @torch.no_grad()
    def magnitudes(self, prompts: Sequence[str]) -> np.ndarray:
        """Every ``d_t``: array [prompts, generations, end - start] (float64)."""
        cfg = self.config
        prompts = list(prompts)
        if not prompts:
            return np.zeros((0, cfg.generations, cfg.resolved_end - cfg.start))
        shape = latent_shape(self.pipe, cfg.height, cfg.width)
        sigma = float(getattr(self.pipe.scheduler, "init_noise_sigma", 1.0))
        e_0 = self.uncond_embedding()
        out = np.zeros((len(prompts), cfg.generations, cfg.resolved_end - cfg.start))
        starts = range(0, len(prompts), cfg.batch_size)
        for lo in progress_bar(
            starts, desc="detect", unit="batch", enabled=self.progress and len(starts) >= 2
        ):
            batch = prompts[lo : lo + cfg.batch_size]
            e_p = encode_prompts(self.pipe, batch, self.device).to(self.dtype)
            for g, seed in enumerate(cfg.seeds):
                x_T = initial_latents(
                    seed, shape, device=self.device, dtype=self.dtype, init_noise_sigma=sigma
                )
                steps = cfg_trajectory(
                    self.pipe.unet,
                    self.pipe.scheduler,
                    x_T.expand(len(batch), *shape),
                    e_p,
                    e_0,
                    guidance_scale=cfg.guidance_scale,
                    num_inference_steps=cfg.num_inference_steps,
                    end=cfg.resolved_end,
                    generator=torch.Generator("cpu").manual_seed(seed),
                )
                for step in steps:
                    if step.index >= cfg.start:
                        mags = step.result.magnitude.double().cpu().numpy()
                        out[lo : lo + len(batch), g, step.index - cfg.start] = mags
        return out

    def score(self, prompts: Sequence[str]) -> list[float]:
        """Detection score per prompt: mean ``d_t`` over the steps and generations (none for no prompts)."""
        mags = self.magnitudes(prompts)
        return [float(v) for v in mags.reshape(len(mags), -1).mean(axis=1)] if len(mags) else []

    # ------------------------------------------------------------------------------------- thresholding
    def calibrate(self, reference_prompts: Sequence[str], target_fpr: float | None = None) -> float:
        """Threshold from prompts known not to be memorized (Wen et al., ICLR 2024); sets and returns
        ``self.threshold``.

        See :func:`threshold_for_fpr`: at most ``target_fpr`` (default: the config's) of the reference
        scores lie above it.
        """
        fpr = self.config.target_fpr if target_fpr is None else target_fpr
        scores = self.score(reference_prompts)
        self.threshold = threshold_for_fpr(scores, fpr)
        log.info(
            "calibrated threshold %.6g on %d reference prompts (target FPR %g)",
            self.threshold,
            len(scores),
            fpr,
        )
        return self.threshold

    def flag(self, scores: Sequence[float]) -> list[bool]:
        """``score > threshold`` per score; needs a threshold."""
        if self.threshold is None:
            raise UsageError("no detection threshold: calibrate on reference prompts or give one")
        return [float(s) > self.threshold for s in scores]


def threshold_for_fpr(reference_scores: Sequence[float], target_fpr: float) -> float:
    """The empirical ``(1 - target_fpr)`` quantile of the reference scores, taken as an order statistic.

    With ``n`` scores sorted ascending and ``k = floor(target_fpr * n)``, the threshold is the ``(n - k)``-th
    smallest score, so flagging ``score > threshold`` flags at most ``k`` reference prompts (exactly ``k``
    without ties): the reference FPR never exceeds the target. E.g. 100 scores at 1% give the 99th smallest.
    """
    scores = np.sort(np.asarray(reference_scores, dtype=np.float64))
    if scores.size == 0:
        raise UsageError("calibration needs at least one reference prompt")
    if not np.all(np.isfinite(scores)):
        raise UsageError("calibration scores contain NaN or infinity")
    if not 0.0 < target_fpr < 1.0:
        raise UsageError(f"target FPR must lie in (0, 1), got {target_fpr}")
    k = math.floor(target_fpr * scores.size + 1e-9)
    if k == 0:
        log.warning(
            "%d reference scores cannot resolve FPR %g: the threshold is their maximum",
            scores.size,
            target_fpr,
        )
    return float(scores[scores.size - k - 1])


# ---------------------------------------------------------------------------------------------- ROC
def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Highest TPR among ROC operating points with ``FPR <= target`` (a reachable threshold, no interpolation)."""
    ok = np.asarray(fpr) <= target + 1e-12
    return float(np.max(np.asarray(tpr)[ok])) if ok.any() else 0.0


def roc_metrics(scores_pos: Sequence[float], scores_neg: Sequence[float]) -> dict[str, Any]:
    """ROC of positives (memorized) against negatives with scikit-learn (protocol: docs/results.md).

    Returns ``auc``, ``tpr_at_1pct_fpr`` (see :func:`tpr_at_fpr`) and the full curve ``fpr``, ``tpr``,
    ``thresholds`` (numpy arrays, every operating point kept). Higher scores mean "memorized".
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    pos = np.asarray(scores_pos, dtype=np.float64)
    neg = np.asarray(scores_neg, dtype=np.float64)
    if pos.size == 0 or neg.size == 0:
        raise UsageError(f"ROC needs positive and negative scores, got {pos.size} and {neg.size}")
    if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(neg))):
        raise UsageError("ROC scores contain NaN or infinity")
    y = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    s = np.concatenate([pos, neg])
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    return {
        "auc": float(roc_auc_score(y, s)),
        "tpr_at_1pct_fpr": tpr_at_fpr(fpr, tpr, 0.01),
        "fpr": fpr,
        "tpr": tpr,
        "thresholds": thresholds,
    }
