"""Detection-threshold calibration from reference prompts (Wen et al., ICLR 2024).

The paper gives no universal threshold: a deployment scores prompts known NOT to be memorized and takes
the threshold that flags at most ``target_fpr`` of them (:func:`~copyguard.mitigation.detect.threshold_for_fpr`:
an order statistic, so the reference FPR never exceeds the target). The gate of AMG and the first-step
detector score the first step with one generation (Wen et al., ICLR 2024: ``end = 1``, ``n = 1``), so
:func:`calibrate_on_prompts` forces that window; the same reference scores also give prompt optimization's
``l_target`` (Wen et al.: a quantile of non-memorized prompts' first-step magnitudes) without a second
detection pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from copyguard.common.errors import UsageError

__all__ = [
    "Calibration",
    "calibrate",
    "calibrate_on_prompts",
    "first_step_config",
    "flagged_pct",
]


def flagged_pct(scores: Sequence[float] | np.ndarray, threshold: float) -> float | None:
    """Share (%) of ``scores`` strictly above ``threshold`` (the flag rule ``score > threshold``); None if empty."""
    s = np.asarray(scores, dtype=np.float64)
    return float(100.0 * (s > threshold).mean()) if s.size else None


@dataclass
class Calibration:
    """A threshold calibrated on reference scores: the scores, the target FPR and where they came from."""

    threshold: float
    target_fpr: float
    reference_scores: np.ndarray
    reference: str = "reference prompts"

    def l_target(self, quantile: float = 0.5) -> float:
        """Prompt optimization's ``l_target``: the ``quantile`` (default the median) of the reference
        first-step magnitudes."""
        if not 0.0 <= quantile <= 1.0:
            raise UsageError(f"quantile must lie in [0, 1], got {quantile}")
        return float(np.quantile(self.reference_scores, quantile))

    def flagged_pct(self, scores: Sequence[float] | np.ndarray) -> float | None:
        """Share (%) of ``scores`` this threshold flags."""
        return flagged_pct(scores, self.threshold)

    def to_dict(self) -> dict[str, Any]:
        """The JSON record: ``reference``, ``reference_prompts`` (count), ``target_fpr``, ``threshold``."""
        return {
            "reference": self.reference,
            "reference_prompts": int(self.reference_scores.size),
            "target_fpr": self.target_fpr,
            "threshold": self.threshold,
        }


def calibrate(
    reference_scores: Sequence[float] | np.ndarray,
    target_fpr: float = 0.01,
    reference: str = "reference prompts",
) -> Calibration:
    """The threshold flagging at most ``target_fpr`` of ``reference_scores`` (see the module docstring)."""
    from copyguard.mitigation.detect import threshold_for_fpr

    scores = np.asarray(reference_scores, dtype=np.float64).reshape(-1)
    return Calibration(threshold_for_fpr(scores, target_fpr), target_fpr, scores, reference)


def first_step_config(detect_config: Any = None) -> Any:
    """``detect_config`` (default: :class:`~copyguard.mitigation.config.DetectConfig`'s defaults) scoring only
    the first step with one generation: the window of AMG's gate and of ``l_target`` (Wen et al.)."""
    from copyguard.mitigation.config import DetectConfig

    base = detect_config if detect_config is not None else DetectConfig()
    return base.model_copy(update={"start": 0, "end": 1, "generations": 1})


def calibrate_on_prompts(
    pipe: Any,
    references: Sequence[str],
    detect_config: Any = None,
    *,
    target_fpr: float | None = None,
    reference: str = "reference prompts",
) -> Calibration:
    """Score ``references`` at the first step (n = 1) of ``detect_config``'s trajectory and calibrate.

    ``target_fpr`` defaults to the config's. Returns a :class:`Calibration` whose scores also give
    :meth:`Calibration.l_target`.
    """
    from copyguard.mitigation.detect import Detector

    if not references:
        raise UsageError("calibration needs at least one reference prompt")
    cfg = first_step_config(detect_config)
    scores = Detector(pipe, cfg, progress=False).score(list(references))
    return calibrate(scores, cfg.target_fpr if target_fpr is None else target_fpr, reference)
