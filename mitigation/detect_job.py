"""The ``detect`` job as one call: :func:`run_detect` scores prompts, flags and explains them, writes JSON lines.

``copyguard detect`` is a thin command line over it; a library caller gets the same checks and file::

    from copyguard.mitigation import DetectConfig, run_detect

    result = run_detect(DetectConfig(), "sd-model/", "prompts.jsonl", "scores.jsonl",
                        reference_prompts="refs.txt", explain=True)
    print(result.summary())

Input mistakes (a NaN threshold, an unknown device, an output path that is a folder, both a threshold and
reference prompts) raise :class:`UsageError` before the model is loaded.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from copyguard.common.errors import UsageError
from copyguard.common.fileops import atomic_write
from copyguard.common.outputs import check_output_file
from copyguard.mitigation.config import DetectConfig
from copyguard.mitigation.prompts import PromptRecord, read_prompt_file

__all__ = ["DetectResult", "check_device", "run_detect"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectResult:
    """The outcome of :func:`run_detect`: one row per prompt (as written to ``out``), the threshold
    (``None`` when neither given nor calibrated), the output file and, for labelled prompts of both
    classes, the ROC metrics (``auc``, ``tpr_at_1pct_fpr``...)."""

    rows: list[dict[str, Any]]
    threshold: float | None
    out: Path
    roc: dict[str, Any] | None = None
    scores: list[float] = field(default_factory=list)

    @property
    def flagged(self) -> int:
        """How many prompts scored above the threshold."""
        return sum(1 for row in self.rows if row["flagged"])

    def summary(self) -> str:
        """The line ``copyguard detect`` prints."""
        line = f"scored {len(self.rows)} prompts -> {self.out}"
        if self.threshold is not None:
            line += f"; flagged {self.flagged} (threshold {self.threshold:.4f})"
        if self.roc is not None:
            line += f"; AUC {self.roc['auc']:.4f}, TPR@1%FPR {self.roc['tpr_at_1pct_fpr']:.3f}"
        return line


def check_device(device: str | None) -> None:
    """``None``, ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` with CUDA present; anything else is a UsageError."""
    if device is not None:
        from copyguard.common.runtime import resolve_device

        resolve_device(device)


def _records(prompts: str | Path | Sequence[PromptRecord] | Sequence[str]) -> list[PromptRecord]:
    if isinstance(prompts, str | Path):
        return read_prompt_file(prompts)
    return [p if isinstance(p, PromptRecord) else PromptRecord(str(p)) for p in prompts]


def _texts(prompts: str | Path | Sequence[str] | None) -> list[str] | None:
    if prompts is None:
        return None
    if isinstance(prompts, str | Path):
        return [r.prompt for r in read_prompt_file(prompts)]
    return [str(p) for p in prompts]


def _load(model: str | Path | Any, device: str | None) -> Any:
    if not isinstance(model, str | Path):
        return model
    from copyguard.mitigation.sd_loader import load_sd_pipeline

    return load_sd_pipeline(model, None if device == "auto" else device)


def run_detect(
    config: DetectConfig,
    model: str | Path | Any,
    prompts: str | Path | Sequence[PromptRecord] | Sequence[str],
    out: str | Path,
    *,
    reference_prompts: str | Path | Sequence[str] | None = None,
    threshold: float | None = None,
    explain: bool = False,
    explain_top: int = 5,
    device: str | None = None,
) -> DetectResult:
    """Score ``prompts`` on ``model`` and write one JSON line per prompt to ``out``.

    ``model``: a diffusers Stable Diffusion folder (loaded on ``device``, default CUDA when present) or a
    loaded pipeline. ``prompts``: a prompt file (.txt, .jsonl, .csv), records or texts. The threshold is
    ``threshold``, or calibrated on ``reference_prompts`` (non-memorized prompts, file or texts) at
    ``config.target_fpr``, or absent (``flagged`` is then ``null``). ``explain``: add the ``explain_top``
    tokens that drive the score of each flagged prompt (of every prompt without a threshold).
    """
    from copyguard.mitigation.attribution import token_attribution, top_tokens
    from copyguard.mitigation.detect import Detector, roc_metrics

    if threshold is not None and not math.isfinite(threshold):
        raise UsageError(f"--threshold must be a finite number, got {threshold}")
    if threshold is not None and reference_prompts is not None:
        raise UsageError("give either --threshold or --reference-prompts, not both")
    if explain_top < 1:
        raise UsageError(f"--explain-top must be at least 1, got {explain_top}")
    check_device(device)
    check_output_file(out)
    records = _records(prompts)
    references = _texts(reference_prompts)
    pipe = _load(model, device)
    detector = Detector(pipe, config, threshold=threshold)
    if references is not None:
        calibrated = detector.calibrate(references)
        log.info(
            "threshold %.4f calibrated on %d reference prompts (FPR <= %.3g)",
            calibrated,
            len(references),
            config.target_fpr,
        )
    scores = [float(s) for s in detector.score([r.prompt for r in records])]
    flags = detector.flag(scores) if detector.threshold is not None else [None] * len(scores)
    rows = []
    for record, score, flagged in zip(records, scores, flags, strict=True):
        row: dict[str, Any] = {
            "prompt": record.prompt,
            "score": round(score, 6),
            "flagged": flagged,
            "threshold": detector.threshold,
        }
        if record.label is not None:
            row["label"] = record.label
        if explain and (flagged or flagged is None):
            row["top_tokens"] = [
                {"token": t.token, "score": round(float(t.score), 6)}
                for t in top_tokens(token_attribution(pipe, record.prompt, config), explain_top)
            ]
        rows.append(row)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(str(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    labelled = [(s, r.label) for s, r in zip(scores, records, strict=True) if r.label is not None]
    roc = None
    if labelled and len({label for _, label in labelled}) == 2:
        roc = roc_metrics([s for s, lab in labelled if lab], [s for s, lab in labelled if not lab])
    return DetectResult(rows, detector.threshold, path, roc, scores)
