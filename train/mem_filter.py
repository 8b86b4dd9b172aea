"""The training-time memorization filter of algorithms.md §5.

For each sample ``i`` at its timestep ``t_i``: ``m_i = ||eps(x_t_i, e_i) - eps(x_t_i, e_0)||_2`` (§2), and
samples with ``m_i >= tau`` leave that step's loss (they stay in the data set). Rules from §5 kept here:

- mask, don't index: ``loss = sum(l_i * keep_i) / max(sum(keep_i), 1)`` (every rank keeps the same graph);
- the unconditional pass batched with the conditional one: one UNet call on 2B samples
  (:func:`copyguard.mitigation.magnitude.text_conditional_magnitude`), whose conditional half IS the
  training prediction; the unconditional embedding is detached and the magnitude carries no gradient;
- every filtered sample is logged (key, step, timestep, magnitude) for the next curation run;
- ``tau`` is fixed, or calibrated as a percentile of the magnitudes over the first K optimizer steps.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from copyguard.mitigation.magnitude import MagnitudeResult, text_conditional_magnitude
from copyguard.train.finetune_config import FilterSpec

__all__ = ["MagnitudeFilter", "filter_mask", "filtered_prediction", "masked_loss"]

log = logging.getLogger(__name__)


def filter_mask(magnitude: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """§5 keep-mask: ``m_i < tau`` (float 0/1, shape [B]); all ones while there is no threshold."""
    if threshold is None:
        return torch.ones_like(magnitude, dtype=torch.float32)
    return (magnitude < threshold).float()


def masked_loss(per_sample: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """§5 mask, don't index: ``sum(l_i * keep_i) / max(kept, 1)`` (0 with a graph when all are dropped)."""
    keep = keep.to(per_sample.dtype)
    return (per_sample * keep).sum() / keep.sum().clamp(min=1.0)


def filtered_prediction(unet: Any, noisy: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor,
                        uncond: torch.Tensor, *, batched: bool = True) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The training prediction ``eps(x_t, e_i)`` (with gradient) and the magnitude ``m_i`` (detached).

    ``batched``: one UNet call on the (uncond, cond) batch of 2B (§5); otherwise the training call plus a
    second, no-grad unconditional call (the public code's sequential way).
    """
    uncond = uncond.detach()
    if batched:
        res = text_conditional_magnitude(unet, noisy, timesteps, cond, uncond, return_eps=True)
        assert isinstance(res, MagnitudeResult)
        return res.eps_cond, res.magnitude.detach()
    pred = unet(noisy, timesteps, encoder_hidden_states=cond).sample
    with torch.no_grad():
        un = uncond.expand(noisy.shape[0], *uncond.shape[1:]) if uncond.shape[0] == 1 else uncond
        eps0 = unet(noisy, timesteps, encoder_hidden_states=un.to(cond.dtype)).sample
    magnitude = (pred.detach().float() - eps0.float()).flatten(1).norm(dim=1)
    return pred, magnitude


class MagnitudeFilter:
    """Threshold state, calibration, the per-step keep-mask and the ``filtered.jsonl`` log.

    ``state_dict()`` is plain JSON (saved with each checkpoint), so a resumed run filters exactly as the
    uninterrupted one; :meth:`open_log` truncates log lines past the resumed step.
    """

    def __init__(self, spec: FilterSpec) -> None:
        self.spec = spec
        self.threshold: float | None = spec.threshold if spec.enabled else None
        self.source = "fixed" if spec.threshold is not None else "calibrating"
        self.calibration: list[float] = []
        self.calibrated_at: int | None = None
        self.seen = 0
        self.filtered = 0
        self.key_counts: Counter = Counter()
        self._log_path: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.spec.enabled

    def keep(self, magnitude: torch.Tensor) -> torch.Tensor:
        """The keep-mask for this micro-batch (all ones when disabled or still calibrating)."""
        if not self.enabled:
            return torch.ones_like(magnitude, dtype=torch.float32)
        return filter_mask(magnitude, self.threshold)

    def record(self, step: int, keys: list[str], timesteps: list[int], magnitudes: list[float],
               keep: list[float]) -> list[dict[str, Any]]:  # fmt: skip
        """Count one (gathered) micro-batch of optimizer step ``step`` (1-based); returns the filtered rows."""
        rows = []
        self.seen += len(keys)
        for key, t, m, k in zip(keys, timesteps, magnitudes, keep, strict=True):
            if self.threshold is None and self.enabled:
                self.calibration.append(float(m))
            if k < 0.5:
                rows.append({"key": key, "step": step, "timestep": int(t), "magnitude": round(float(m), 6)})
                self.key_counts[key] += 1
        self.filtered += len(rows)
        if rows and self._log_path is not None:
            with self._log_path.open("a", encoding="utf-8") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in rows)
        return rows

    def end_step(self, step: int) -> None:
        """After optimizer step ``step`` (0-based): set the calibrated threshold once K steps are seen."""
        if self.enabled and self.threshold is None and step + 1 >= self.spec.calibrate_steps:
            if not self.calibration:
                raise RuntimeError("no magnitudes collected for the filter calibration")
            self.threshold = float(np.percentile(self.calibration, self.spec.percentile))
            self.source = f"p{self.spec.percentile:g} of {len(self.calibration)} magnitudes"
            self.calibrated_at = step + 1
            log.info("filter threshold %.4f (%s, after %d steps)", self.threshold, self.source, step + 1)

    def open_log(self, path: Path, resumed_step: int) -> None:
        """Log to ``path``; keep only rows of steps ``<= resumed_step`` (1-based; 0 starts a fresh file)."""
        self._log_path = path
        rows = []
        if resumed_step and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip() and json.loads(line)["step"] <= resumed_step:
                    rows.append(line + "\n")
        path.write_text("".join(rows), encoding="utf-8")

    def state_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "source": self.source,
            "calibration": self.calibration,
            "calibrated_at": self.calibrated_at,
            "seen": self.seen,
            "filtered": self.filtered,
            "key_counts": dict(self.key_counts),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.threshold = state["threshold"]
        self.source = state["source"]
        self.calibration = list(state["calibration"])
        self.calibrated_at = state["calibrated_at"]
        self.seen, self.filtered = int(state["seen"]), int(state["filtered"])
        self.key_counts = Counter(state["key_counts"])

    def summary(self, top: int = 20) -> dict[str, Any]:
        """How many samples were filtered, which keys and how often (the run's evidence for curation)."""
        return {
            "enabled": self.enabled,
            "threshold": self.threshold,
            "threshold_source": self.source if self.enabled else None,
            "calibrated_at_step": self.calibrated_at,
            "samples_seen": self.seen,
            "samples_filtered": self.filtered,
            "filtered_share": self.filtered / self.seen if self.seen else 0.0,
            "unique_keys_filtered": len(self.key_counts),
            "top_keys": [{"key": k, "times": n} for k, n in self.key_counts.most_common(top)],
        }
