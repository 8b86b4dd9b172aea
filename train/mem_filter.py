"""The training-time memorization filter of Wen et al., ICLR 2024.

For each sample ``i`` at its timestep ``t_i``: ``m_i = ||eps(x_t_i, e_i) - eps(x_t_i, e_0)||_2``, and
samples with ``m_i >= tau`` leave that step's loss (they stay in the data set). Wen et al.'s rules kept here:

- mask, don't index: ``loss = sum(l_i * keep_i) / max(sum(keep_i), 1)`` (every rank keeps the same graph);
- the unconditional pass batched with the conditional one: one UNet call on 2B samples
  (:func:`copyguard.mitigation.magnitude.text_conditional_magnitude`), whose conditional half IS the
  training prediction; the unconditional embedding is detached and the magnitude carries no gradient;
- every filtered sample is logged (key, step, timestep, magnitude) for the next curation run;
- ``tau`` is fixed, or calibrated from the magnitudes of the first K optimizer steps: by default
  ``median + k * 1.4826 * MAD`` (a robust outlier cut, our default: it drops almost nothing when no sample
  stands out), or a percentile as in Wen et al.'s public code (which always drops that share).

Recalibration (our extension, ``FilterConfig.recalibrate_every = R > 0``): a fine-tune on new data moves the
magnitudes after the first K steps (the text conditioning of every sample grows), so a threshold fixed at step
K drops ever more clean samples. With R > 0 the thresholds are recomputed every R steps from the magnitudes of
the last K steps (a sliding window; filtered samples included, which a robust rule tolerates), so the cut
follows the bulk and still stands out the samples above it.

Timestep buckets (our extension, ``FilterConfig.timestep_buckets = N > 1``): ``m_i``'s scale depends strongly on
``t_i``, so one calibrated ``tau`` never catches a memorized sample drawn at a low ``t``. With N buckets the
calibration sets one ``tau_b`` per equal-width bucket of ``[0, num_train_timesteps)`` (the rule applied to that
bucket's magnitudes; the global one for a bucket with fewer than :data:`MIN_BUCKET_SAMPLES`), and
sample ``i`` is compared with ``tau_{b(t_i)}``. A fixed ``tau`` stays one number.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from copyguard.mitigation.magnitude import MagnitudeResult, robust_threshold, text_conditional_magnitude
from copyguard.train.config import FilterConfig

__all__ = ["MIN_BUCKET_SAMPLES", "MagnitudeFilter", "bucket_thresholds", "calibrated_threshold", "filter_mask", "filtered_prediction",
           "masked_loss", "timestep_bucket"]  # fmt: skip

log = logging.getLogger(__name__)

MIN_BUCKET_SAMPLES = 20
"""A bucket with fewer calibration magnitudes than this uses the global percentile."""


def filter_mask(magnitude: torch.Tensor, threshold: float | torch.Tensor | None) -> torch.Tensor:
    """Keep-mask: ``m_i < tau`` (float 0/1, shape [B]); all ones while there is no threshold.

    ``threshold``: one number, or a per-sample tensor of shape [B] (timestep buckets).
    """
    if threshold is None:
        return torch.ones_like(magnitude, dtype=torch.float32)
    if isinstance(threshold, torch.Tensor):
        threshold = threshold.to(magnitude.device, magnitude.dtype)
    return (magnitude < threshold).float()


def timestep_bucket(timesteps: Any, buckets: int, num_train_timesteps: int) -> np.ndarray:
    """Equal-width bucket index ``floor(t * N / T)`` (clipped to ``[0, N-1]``) of each timestep."""
    t = np.asarray(timesteps.detach().cpu() if isinstance(timesteps, torch.Tensor) else timesteps)
    idx = np.floor(t.astype(np.float64) * buckets / num_train_timesteps).astype(np.int64)
    return np.clip(idx, 0, buckets - 1)


def calibrated_threshold(magnitudes: Any, spec: FilterConfig) -> float:
    """``spec.rule`` applied to ``magnitudes``: ``median + mads * 1.4826 * MAD`` or the ``percentile``."""
    if spec.rule == "mad":
        return robust_threshold(magnitudes, spec.mads)
    return float(np.percentile(np.asarray(magnitudes, dtype=np.float64), spec.percentile))


def bucket_thresholds(magnitudes: list[float], timesteps: list[int], spec: FilterConfig, buckets: int,
                      num_train_timesteps: int, min_samples: int = MIN_BUCKET_SAMPLES) -> tuple[float, list[float]]:  # fmt: skip
    """The threshold of ``spec.rule`` over all ``magnitudes`` and one per timestep bucket (the global one where
    a bucket has fewer than ``min_samples``)."""
    mags = np.asarray(magnitudes, dtype=np.float64)
    glob = calibrated_threshold(mags, spec)
    idx = timestep_bucket(timesteps, buckets, num_train_timesteps)
    per = []
    for b in range(buckets):
        sel = mags[idx == b]
        per.append(calibrated_threshold(sel, spec) if sel.size >= min_samples else glob)
    return glob, per


def masked_loss(per_sample: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mask, don't index: ``sum(l_i * keep_i) / max(kept, 1)`` (0 with a graph when all are dropped)."""
    keep = keep.to(per_sample.dtype)
    return (per_sample * keep).sum() / keep.sum().clamp(min=1.0)


def filtered_prediction(unet: Any, noisy: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor,
                        uncond: torch.Tensor, *, batched: bool = True) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The training prediction ``eps(x_t, e_i)`` (with gradient) and the magnitude ``m_i`` (detached).

    ``batched``: one UNet call on the (uncond, cond) batch of 2B; otherwise the training call plus a
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

    def __init__(self, spec: FilterConfig, num_train_timesteps: int = 1000) -> None:
        self.spec = spec
        self.num_train_timesteps = int(num_train_timesteps)
        self.threshold: float | None = spec.threshold if spec.enabled else None
        self.thresholds: list[float] | None = None  # per timestep bucket once calibrated with buckets > 1
        self.source = "fixed" if spec.threshold is not None else "calibrating"
        self.calibration: list[float] = []
        self.calibration_t: list[int] = []
        self.calibration_step: list[int] = []  # each calibration magnitude's optimizer step (1-based)
        self.calibrated_at: int | None = None
        self.recalibrations = 0
        self.seen = 0
        self.filtered = 0
        self.key_counts: Counter = Counter()
        self._log_path: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.spec.enabled

    @property
    def bucketed(self) -> bool:
        """Whether thresholds are per timestep bucket (calibrated with ``timestep_buckets > 1``)."""
        return self.thresholds is not None

    def sample_thresholds(self, timesteps: Any) -> list[float | None]:
        """Each sample's threshold (its bucket's, or the single one; None while calibrating)."""
        n = len(timesteps)
        if self.thresholds is None:
            return [self.threshold] * n
        idx = timestep_bucket(timesteps, len(self.thresholds), self.num_train_timesteps)
        return [self.thresholds[int(b)] for b in idx]

    def keep(self, magnitude: torch.Tensor, timesteps: torch.Tensor | None = None) -> torch.Tensor:
        """The keep-mask for this micro-batch (all ones when disabled or still calibrating).

        ``timesteps`` ([B], each sample's ``t_i``) is required once the thresholds are per bucket.
        """
        if not self.enabled:
            return torch.ones_like(magnitude, dtype=torch.float32)
        if self.thresholds is None:
            return filter_mask(magnitude, self.threshold)
        if timesteps is None:
            raise ValueError("the filter has per-timestep-bucket thresholds: pass keep(magnitude, timesteps)")
        tau = torch.tensor(self.sample_thresholds(timesteps), dtype=torch.float32)
        return filter_mask(magnitude, tau)

    def record(self, step: int, keys: list[str], timesteps: list[int], magnitudes: list[float],
               keep: list[float]) -> list[dict[str, Any]]:  # fmt: skip
        """Count one (gathered) micro-batch of optimizer step ``step`` (1-based); returns the filtered rows."""
        rows = []
        self.seen += len(keys)
        taus = self.sample_thresholds([int(t) for t in timesteps])
        for key, t, m, k, tau in zip(keys, timesteps, magnitudes, keep, taus, strict=True):
            if self.enabled and (self.threshold is None or self.recalibrating):
                self.calibration.append(float(m))
                self.calibration_t.append(int(t))
                self.calibration_step.append(int(step))
            if k < 0.5:
                rows.append({"key": key, "step": step, "timestep": int(t), "magnitude": round(float(m), 6),
                             "threshold": None if tau is None else round(float(tau), 6)})  # fmt: skip
                self.key_counts[key] += 1
        self.filtered += len(rows)
        if rows and self._log_path is not None:
            with self._log_path.open("a", encoding="utf-8") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in rows)
        return rows

    @property
    def recalibrating(self) -> bool:
        """Whether calibrated thresholds are recomputed every ``recalibrate_every`` steps."""
        return self.spec.recalibrate_every > 0 and self.spec.threshold is None

    def end_step(self, step: int) -> None:
        """After optimizer step ``step`` (0-based): set the calibrated threshold once K steps are seen, and
        recompute it every ``recalibrate_every`` steps after that from the last K steps' magnitudes."""
        if not self.enabled:
            return
        if self.threshold is None and step + 1 >= self.spec.calibrate_steps:
            self._calibrate(step + 1)
            self.calibrated_at = step + 1
            log.info("filter threshold %.4f (%s, after %d steps)", self.threshold, self.source, step + 1)
            if self.thresholds is not None:
                log.info("filter bucket thresholds: %s", ", ".join(f"{x:.4f}" for x in self.thresholds))
        elif self._recalibration_due(step + 1):
            oldest = step + 1 - self.spec.calibrate_steps  # keep steps oldest+1 .. step+1
            first = next(
                (i for i, s in enumerate(self.calibration_step) if s > oldest), len(self.calibration)
            )
            del self.calibration[:first], self.calibration_t[:first], self.calibration_step[:first]
            self._calibrate(step + 1)
            self.recalibrations += 1
            log.debug("filter recalibrated at step %d: %.4f (%s)", step + 1, self.threshold, self.source)

    def _recalibration_due(self, done: int) -> bool:
        """Whether the thresholds are recomputed after ``done`` (1-based) optimizer steps."""
        if not self.recalibrating or self.calibrated_at is None:
            return False
        return (done - self.calibrated_at) % self.spec.recalibrate_every == 0

    def _calibrate(self, step: int) -> None:
        """Set the threshold(s) from the collected magnitudes (after 1-based optimizer step ``step``)."""
        if not self.calibration:
            raise RuntimeError("no magnitudes collected for the filter calibration")
        n_b, spec = self.spec.timestep_buckets, self.spec
        self.threshold, per = bucket_thresholds(
            self.calibration, self.calibration_t, spec, n_b, self.num_train_timesteps
        )
        rule = f"median + {spec.mads:g} MAD" if spec.rule == "mad" else f"p{spec.percentile:g}"
        self.source = f"{rule} of {len(self.calibration)} magnitudes"
        if n_b > 1:
            self.thresholds = per
            self.source += f" in {n_b} timestep buckets"
        if self.recalibrating:
            window = f"{spec.calibrate_steps} step" + ("s" if spec.calibrate_steps != 1 else "")
            self.source += f", recomputed every {spec.recalibrate_every} steps over the last {window}"

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
            "thresholds": self.thresholds,
            "num_train_timesteps": self.num_train_timesteps,
            "source": self.source,
            "calibration": self.calibration,
            "calibration_t": self.calibration_t,
            "calibration_step": self.calibration_step,
            "calibrated_at": self.calibrated_at,
            "recalibrations": self.recalibrations,
            "seen": self.seen,
            "filtered": self.filtered,
            "key_counts": dict(self.key_counts),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.threshold = state["threshold"]
        thr = state.get("thresholds")  # absent in checkpoints written before timestep buckets
        self.thresholds = None if thr is None else [float(x) for x in thr]
        self.num_train_timesteps = int(state.get("num_train_timesteps", self.num_train_timesteps))
        self.source = state["source"]
        self.calibration = list(state["calibration"])
        self.calibration_t = [int(t) for t in state.get("calibration_t", [])]
        steps = [int(s) for s in state.get("calibration_step", [])]  # absent before recalibration: oldest
        self.calibration_step = [0] * (len(self.calibration) - len(steps)) + steps
        self.calibrated_at = state["calibrated_at"]
        self.recalibrations = int(state.get("recalibrations", 0))
        self.seen, self.filtered = int(state["seen"]), int(state["filtered"])
        self.key_counts = Counter(state["key_counts"])

    def summary(self, top: int = 20) -> dict[str, Any]:
        """How many samples were filtered, which keys and how often (the run's evidence for curation)."""
        return {
            "enabled": self.enabled,
            "threshold": self.threshold,
            "timestep_buckets": self.spec.timestep_buckets,
            "bucket_thresholds": self.thresholds,
            "threshold_source": self.source if self.enabled else None,
            "calibrated_at_step": self.calibrated_at,
            "recalibrations": self.recalibrations,
            "samples_seen": self.seen,
            "samples_filtered": self.filtered,
            "filtered_share": self.filtered / self.seen if self.seen else 0.0,
            "unique_keys_filtered": len(self.key_counts),
            "top_keys": [{"key": k, "times": n} for k, n in self.key_counts.most_common(top)],
        }
