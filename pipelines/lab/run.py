"""One ``lab-model`` run: train (or reuse) the model, measure its memorization, write the model card.

Outputs in ``MODEL_DIR``: the diffusers folder, ``lab_training.json`` (settings, data, timings, machine),
``memorization.json`` (:func:`copyguard.pipelines.lab.evaluate.evaluate_memorization`), ``memorization.png``
(training images next to their prompts' generations) and ``README.md`` (the model card).

Nothing at the end of a long job loses its result: the trained model, ``lab_training.json`` and a card
without figures are on disk before the measurement starts, ``memorization.json`` before the chart and the
card are drawn. A failed measurement or card leaves all of that usable and raises one clear error: a
:class:`~copyguard.common.errors.UsageError` when the data is the problem (the CLI exits 2), else
:class:`EvaluationFailed` (exit 1); ``copyguard lab-model --eval-only`` then reruns just the measurement.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from copyguard.common.errors import UsageError
from copyguard.common.fileops import atomic_write
from copyguard.common.runtime import machine_info, resolve_device
from copyguard.pipelines.lab.card import CHART, render_model_card, write_memorization_chart
from copyguard.pipelines.lab.config import LabConfig
from copyguard.pipelines.lab.data import LabData, load_lab_data
from copyguard.pipelines.lab.evaluate import evaluate_memorization
from copyguard.pipelines.lab.trainer import torch_settings, train_lab_model

__all__ = ["EvaluationFailed", "run_lab_model"]

log = logging.getLogger(__name__)

TRAINING_INFO = "lab_training.json"
MEMORIZATION = "memorization.json"
CARD = "README.md"


class EvaluationFailed(RuntimeError):
    """The measurement or the card failed after the model was saved (the model itself is usable)."""


def run_lab_model(
    cfg: LabConfig,
    data_pattern: str | list[str],
    out_dir: str | Path,
    *,
    resume: bool = False,
    eval_only: bool = False,
    evaluate: bool = True,
) -> dict[str, Any]:
    """Train (unless ``eval_only``), then measure (unless ``evaluate`` is false) and write the card.

    Returns ``{"training": ..., "memorization": ...}`` (the two JSON files' bodies; memorization is
    ``None`` when not measured).
    """
    out = Path(out_dir)
    device = resolve_device(cfg.device)
    if eval_only and not (out / "model_index.json").is_file():
        raise UsageError(f"--eval-only needs a trained model in {out} (no model_index.json there)")
    with torch_settings(cfg, device):
        return _run(cfg, out, device, data_pattern, resume, eval_only, evaluate)


def _run(cfg: LabConfig, out: Path, device: torch.device, data_pattern: str | list[str], resume: bool,
         eval_only: bool, evaluate: bool) -> dict[str, Any]:  # fmt: skip
    preset = cfg.active()
    started = machine_info(threads=torch.get_num_threads(), device=str(device))
    data = load_lab_data(data_pattern, preset.resolution, preset.heldout, cfg.seed)
    info_path = out / TRAINING_INFO
    if eval_only:
        training = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    else:
        result = train_lab_model(cfg, data_pattern, out, resume=resume, data=data)
        training = json.loads(info_path.read_text(encoding="utf-8"))
        training["machine"] = {
            "start": started,
            "end_load_average": machine_info(threads=torch.get_num_threads(), device=str(device)).get(
                "load_average"
            ),
        }
        atomic_write(str(info_path), json.dumps(training, indent=2, sort_keys=True) + "\n")
        log.info("trained in %.0f s: %s", result.timings.get("train_total_s", 0.0), result.timings)
        _guarded(out, "writing the model card", _write_card, cfg, training, None, data_pattern, out)
    memorization = None
    if evaluate:
        memorization = _guarded(out, "measuring memorization", _measure, cfg, data, out, device)
        _guarded(out, "drawing the memorization chart", write_memorization_chart, memorization, out / CHART)
    if evaluate or eval_only:
        _guarded(out, "writing the model card", _write_card, cfg, training, memorization, data_pattern, out)
    return {"training": training, "memorization": memorization}


def _measure(cfg: LabConfig, data: LabData, out: Path, device: torch.device) -> dict[str, Any]:
    """Measure, then save ``memorization.json`` at once (before anything else can fail)."""
    spec = cfg.active().eval
    t0 = time.perf_counter()
    memorization = evaluate_memorization(
        out,
        data,
        spec,
        device=device,
        seed=cfg.seed,
        nearest_train=spec.nearest_train,
        grid_path=out / "memorization.png",
    )
    memorization["machine"] = machine_info(threads=torch.get_num_threads(), device=str(device))
    atomic_write(str(out / MEMORIZATION), json.dumps(memorization, indent=1, sort_keys=True) + "\n")
    log.info("memorization measured in %.0f s", time.perf_counter() - t0)
    return memorization


def _write_card(
    cfg: LabConfig, training: dict[str, Any], mem: dict[str, Any] | None, pattern: str | list[str], out: Path
) -> None:
    atomic_write(str(out / CARD), render_model_card(cfg.preset, training, mem, pattern))


def _guarded(out: Path, what: str, fn: Any, *args: Any) -> Any:
    """Run one after-training step; a failure becomes one line that says the model is kept."""
    try:
        return fn(*args)
    except UsageError as exc:
        raise UsageError(
            f"{what} failed: {exc} (the trained model in {out} is kept: fix this, then rerun "
            "with --eval-only)"
        ) from exc
    except Exception as exc:
        log.debug("%s failed", what, exc_info=True)
        message = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {message[-1]}" if message else type(exc).__name__
        raise EvaluationFailed(
            f"{what} failed: {reason} (the trained model in {out} is kept; rerun with --eval-only)"
        ) from exc
